# The gateway image for docker-compose.yml (MongoDB, S3 and LiveKit run as their own services).
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
ENV HOST=0.0.0.0 PORT=8080 LOG_JSON=true
EXPOSE 8080
CMD ["voice-gateway", "serve"]
