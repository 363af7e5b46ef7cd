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


  // --- The draft form (issue 11) ---------------------------------------------------------------------------
  // <form data-draft-form data-storage-key="draft:12:v3">: one request at a time (the fields share the form's
  // hx-sync queue); a save or submit is never aborted by a validation; Ctrl/Cmd+Enter saves; leaving with unsaved
  // text asks first; the typed text is kept in localStorage (this browser only) until a save succeeds. Only an
  // explicit save writes to the server: nothing here posts on its own.
  var FIELDS = ["title", "severity", "description", "stage", "service"];
  var dirty = false;

  function draftForm() { return document.querySelector("[data-draft-form]"); }
  function storageKey(form) { return "isdown-admin:" + form.dataset.storageKey; }
  function isValidation(event) {
    var parameters = event.detail.requestConfig && event.detail.requestConfig.parameters;
    return parameters && String(parameters.get ? parameters.get("action") : parameters.action) === "validate";
  }
  function store(form) {
    var values = {};
    FIELDS.forEach(function (name) { if (form.elements[name]) values[name] = form.elements[name].value; });
    try { window.localStorage.setItem(storageKey(form), JSON.stringify(values)); } catch (e) { /* full or off */ }
  }
  function forget(form) { try { window.localStorage.removeItem(storageKey(form)); } catch (e) { /* off */ } }

  function initDraftForm() {
    var form = draftForm();
    if (!form || form.dataset.draftBound) return;
    form.dataset.draftBound = "1";
    dirty = false;
    var saved = null;
    try { saved = JSON.parse(window.localStorage.getItem(storageKey(form)) || "null"); } catch (e) { saved = null; }
    var notice = document.getElementById("restored-notice");
    if (saved) {
      var original = {};
      var differs = false;
      FIELDS.forEach(function (name) {
        var field = form.elements[name];
        if (!field || !(name in saved)) return;
        original[name] = field.value;
        if (field.value !== saved[name]) { differs = true; field.value = saved[name]; }
      });
      if (differs && notice) {
        dirty = true;
        notice.hidden = false;
        notice.querySelector("[data-discard-restored]").addEventListener("click", function () {
          Object.keys(original).forEach(function (name) { form.elements[name].value = original[name]; });
          forget(form);
          dirty = false;
          notice.hidden = true;
          initCounters(document);
        });
      }
      dirty = true;  // a stored copy is text not saved yet, restored or already in the form
    }
    form.addEventListener("input", function () { dirty = true; store(form); });
    form.addEventListener("change", function () { dirty = true; store(form); });
    form.addEventListener("submit", function () { dirty = false; });
  }

  // Ctrl+Enter (Cmd+Enter on a Mac) in the draft form saves it.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    var form = event.target.closest && event.target.closest("[data-draft-form]");
    if (!form) return;
    event.preventDefault();
    var save = form.querySelector("button[value=save]");
    if (save && !save.disabled) form.requestSubmit(save);
  });

  // A save or submit in flight wins: validations asked for meanwhile are dropped, not allowed to abort it.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = draftForm();
    if (!form || !form.contains(event.detail.elt)) return;
    if (isValidation(event)) {
      if (form.dataset.saving) event.preventDefault();
    } else if (event.detail.elt === form) {
      form.dataset.saving = "1";
    }
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = draftForm();
    if (!form || event.detail.elt !== form) return;
    delete form.dataset.saving;
    // Saved or submitted (the server redirects): the stored copy is no longer needed.
    if (event.detail.xhr && event.detail.xhr.getResponseHeader("HX-Redirect")) { forget(form); dirty = false; }
  });
  // A plain (no-JS path) submit that leaves the page successfully: the next page load on another key forgets.
  window.addEventListener("beforeunload", function (event) {
    if (!dirty) return;
    event.preventDefault();
    event.returnValue = "";
  });

  document.addEventListener("DOMContentLoaded", function () { initCounters(document); labelCells(document); initDraftForm(); });
  document.addEventListener("htmx:afterSettle", function (event) { initCounters(document); labelCells(document); initDraftForm(); });
})();

// --- Draft templates (issue 12): picking a template reloads the form filled from it ----------------------------
// <form data-autosubmit>: a choice in its select submits it (a GET with ?template=); its button does the same
// without JavaScript. <input data-copy-from="id">: takes that field's current value first (the service chosen in
// the draft form, so the template's {services} names it).
(function () {
  "use strict";
  function copyValues(form) {
    form.querySelectorAll("[data-copy-from]").forEach(function (input) {
      var source = document.getElementById(input.dataset.copyFrom);
      if (source) input.value = source.value;
    });
  }
  document.addEventListener("change", function (event) {
    var form = event.target.closest && event.target.closest("form[data-autosubmit]");
    if (form && event.target.tagName === "SELECT") { copyValues(form); form.requestSubmit(); }
  });
  document.addEventListener("submit", function (event) {
    if (event.target.matches && event.target.matches("form[data-autosubmit]")) copyValues(event.target);
  }, true);
})();

/* --- One incident, several services (issue 12, fan-out) --- */
// The "Also affected" list leaves out the service chosen above (the server ignores it there anyway).
(function () {
  "use strict";
  function syncAlsoAffected() {
    var primary = document.getElementById("id_service");
    var list = document.getElementById("id_also_services");
    if (!primary || !list) return;
    list.querySelectorAll("input[type=checkbox]").forEach(function (box) {
      var same = box.value === primary.value;
      if (same) box.checked = false;
      box.disabled = same;
      box.closest("label").classList.toggle("is-primary", same);
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target && event.target.id === "id_service") syncAlsoAffected();
  });
  document.addEventListener("DOMContentLoaded", syncAlsoAffected);
  document.addEventListener("htmx:afterSettle", syncAlsoAffected);
})();
