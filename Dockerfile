# The gateway image for docker-compose.yml (MongoDB, S3 and LiveKit run as their own services).

# The browser code the gateway serves (/docs, the dashboard's web calls): the pinned npm
# packages of scripts/web-assets.json, installed at build time, never loaded from a CDN.
FROM node:20-bookworm-slim AS web-assets
WORKDIR /web-assets
COPY scripts/web-assets.json package.json
RUN npm install --no-audit --no-fund --ignore-scripts --no-save --loglevel=error

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY audio audio
COPY telephony telephony
COPY gateway gateway
COPY storage storage
COPY webhooks webhooks
RUN pip install --no-cache-dir .
COPY --from=web-assets /web-assets/node_modules /opt/web-assets/node_modules
ENV HOST=0.0.0.0 PORT=8080 LOG_JSON=true WEB_ASSETS_DIR=/opt/web-assets
EXPOSE 8080
CMD ["voice-gateway", "serve"]
