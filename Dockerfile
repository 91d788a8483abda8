# weaving on a CUDA machine (README, "Docker"):
#   docker build -t weaving .
#   docker run --rm --gpus all --ipc=host --user "$(id -u):$(id -g)" \
#       -v "$PWD":/workspace -v "$HOME/.cache/huggingface":/cache/huggingface \
#       weaving fit --config /opt/weaving/configs/finetune/vit_b32.yaml --config /opt/weaving/configs/finetune/eurosat.yaml
# The base image is pinned by tag and brings torch and torchvision with CUDA; constraints.txt pins every other
# dependency to the versions the test suite passed with, so rebuilding gives the same environment.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# Caches live under /cache (mount the host's Hugging Face cache on /cache/huggingface so model weights are
# downloaded once); any user id may write there, so the container can run as the calling user.
ENV HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    PIP_NO_CACHE_DIR=1
RUN mkdir -p /cache/huggingface /cache/torch && chmod -R 1777 /cache

WORKDIR /opt/weaving
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY weaving ./weaving
COPY configs ./configs
RUN pip install -c constraints.txt . && weaving --version

WORKDIR /workspace
ENTRYPOINT ["weaving"]
CMD ["--help"]
