# The avatar server on its offline defaults: lite engine, espeak TTS, the default avatar.
# Not built on the machine this was written on (no Docker engine there); see README "Deploy".
#   docker build -t avatar .                                   # CPU (default)
#   docker build -t avatar:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --network host avatar                      # page + WebRTC media on this host
#   docker run --rm --gpus all --network host -v $PWD/models:/app/models:ro avatar:cuda --model musetalk
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# torch first, from the index that matches the hardware, so requirements.txt finds its pin satisfied
RUN pip install torch==2.13.0 --index-url "$TORCH_INDEX"
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --system --create-home --uid 10001 avatar \
 && python genavatar.py --default \
 && chown -R avatar:avatar /app/data
USER avatar

EXPOSE 8010
# Kubernetes/compose can use /readyz instead (503 while full or draining).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8010/healthz', timeout=2).status != 200)"
# SIGTERM drains: no new sessions, --drain-timeout for the open ones (give `docker stop -t 40`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "app.py", "--host", "0.0.0.0", "--listenport", "8010"]
CMD ["--model", "lite", "--tts", "espeak"]
