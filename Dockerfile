# lrgate's image for the flow runs of docker and kubernetes work pools (deployments/work-pools/):
#   docker build -t lrgate:latest .
# The CUDA runtime comes with PyPI's torch wheels; the host needs only the NVIDIA driver (and, for docker, the
# NVIDIA Container Toolkit). No ENTRYPOINT: the worker supplies the command (`prefect flow-run execute`).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /opt/lrgate

# torch and torchvision first, in their own layer, pinned as pyproject.toml caps them (README: Set-up).
RUN pip install torch==2.14.1 torchvision==0.29.1

COPY . .
RUN pip install . && python -c "import lrgate.flows.pipeline, torch; print(torch.__version__)"
