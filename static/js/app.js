// isdown-admin's only script. No inline scripts anywhere (CSP): behaviour hangs off data attributes.
(function () {
  "use strict";

  // htmx 2 does not swap 4xx answers by default. Our validation (422) and conflict (409) answers are
  // partials meant to be shown, so swap them; everything else keeps htmx's default.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (status === 422 || status === 409) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // Character counters: <span class="counter" data-counter-for="id_title" data-max="255">.
  function updateCounter(counter) {
    var field = document.getElementById(counter.dataset.counterFor);
    if (!field) return;
    var max = parseInt(counter.dataset.max, 10);
    var length = field.value.length;
    counter.textContent = length + " / " + max;
    counter.classList.toggle("over", length > max);
  }
  function initCounters(root) {
    root.querySelectorAll("[data-counter-for]").forEach(function (counter) {
      var field = document.getElementById(counter.dataset.counterFor);
      if (!field || field.dataset.counterBound) { updateCounter(counter); return; }
      field.dataset.counterBound = "1";
      field.addEventListener("input", function () { updateCounter(counter); });
      updateCounter(counter);
    });
  }

  // Buttons that ask before acting: <button data-confirm="Discard this draft?">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // Tables stack on a phone (app.css): each cell carries its column's name as data-label.
  function labelCells(root) {
    root.querySelectorAll(".table-wrap table").forEach(function (table) {
      var headers = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
        return th.textContent.trim();
      });
      table.querySelectorAll("tbody tr").forEach(function (row) {
        Array.prototype.forEach.call(row.children, function (cell, index) {
          if (headers[index] && !cell.hasAttribute("data-label")) cell.setAttribute("data-label", headers[index]);
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { initCounters(document); labelCells(document); });
  document.addEventListener("htmx:afterSettle", function (event) { initCounters(document); labelCells(document); });
})();
