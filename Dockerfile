FROM python:3.11-slim

# Production is the image's default: DEBUG off, static files built for it (hashed names, compressed).
# docker-compose.yml runs the development demo and turns DEBUG on explicitly; deploy/compose.production.yml runs
# this image as it is, with the environment of deploy/production.env.example.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DEBUG=0
WORKDIR /app

RUN useradd --create-home --uid 1000 app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# Values for this build step only, so that the production settings load: none of them stays in the image.
RUN SECRET_KEY="build-only-$(python -c 'import secrets; print(secrets.token_urlsafe(48))')" \
    ALLOWED_HOSTS=build.invalid ISDOWN_API_KEY=build-only AUDIT_SIGNING_KEY="$(python -m isdown_admin.signing new-key)" \
    python manage.py collectstatic --noinput

# Beat's schedule file (--schedule=var/celerybeat-schedule): the one directory the app user may write.
RUN mkdir -p /app/var && chown app /app/var

USER app
EXPOSE 8000
CMD ["gunicorn", "isdown_admin.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
