# Virtual Hall (虚拟政务大厅) server image.
#   docker build -t virtual-hall .
#   docker run -p 8080:8080 -e HALL_SECRET_KEY=... -v hall-data:/data virtual-hall

# The pages' browser libraries (socket.io-client, pdf.js), exactly as package-lock.json pins
# them; only their dist files reach the final image.
FROM node:20-slim AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --omit=optional --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HALL_DATA_DIR=/data \
    HALL_HOST=0.0.0.0 \
    HALL_PORT=8080 \
    HALL_VENDOR_DIR=/app/node_modules

WORKDIR /app
# A regular (non-editable) install: templates, static files and the demo catalog are package
# data, so the image needs nothing from the source tree at run time.
COPY pyproject.toml README.md ./
COPY rooms ./rooms
COPY server ./server
COPY signaling ./signaling
COPY web ./web
COPY kiosk ./kiosk
COPY --from=assets /assets/node_modules/socket.io-client/dist ./node_modules/socket.io-client/dist
COPY --from=assets /assets/node_modules/pdfjs-dist/build ./node_modules/pdfjs-dist/build
COPY --from=assets /assets/node_modules/pdfjs-dist/cmaps ./node_modules/pdfjs-dist/cmaps
COPY --from=assets /assets/node_modules/pdfjs-dist/standard_fonts ./node_modules/pdfjs-dist/standard_fonts
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin hall \
    && mkdir -p /data \
    && chown hall:hall /data

USER hall
# The SQLite records DB (when HALL_DATABASE_URL is unset) lives here; keep it across restarts.
VOLUME ["/data"]
EXPOSE 8080

# The slim image has no curl; python is there anyway. /healthz = "the process answers".
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HALL_PORT', '8080'), timeout=4)" || exit 1

CMD ["hall", "serve", "--host", "0.0.0.0"]
