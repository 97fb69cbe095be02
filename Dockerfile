# ccproxy-engine as a container image (docs/deployment.md). From the repository root:
#   docker build -t ccproxy-engine .
#   docker run -p 3456:3456 -e CCPROXY_API_KEY=... -e OPENAI_API_KEY=... ccproxy-engine
# The built-in rules ship inside the wheel; the config (deploy/docker/config.yaml) reads the
# server key and the provider keys from the environment.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine/ engine/
COPY rules/ rules/
COPY schemas/ schemas/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
# Nothing writes to disk at run time: no bytecode, and tiktoken reads its (bundled) encoding without
# copying it into a cache directory first. (DL3064 mistakes TIKTOKEN_CACHE_DIR for a secret.)
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIKTOKEN_CACHE_DIR=""
RUN groupadd --system --gid 10001 ccproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ccproxy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/docker/config.yaml /etc/ccproxy-engine/config.yaml
USER 10001:10001
EXPOSE 3456
# /health answers without the server key; the slim image has no curl, so Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CCPROXY_PORT', '3456') + '/health', timeout=4)"]
ENTRYPOINT ["ccproxy-engine", "serve"]
CMD ["--config", "/etc/ccproxy-engine/config.yaml"]
