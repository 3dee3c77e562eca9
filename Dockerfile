# The gateway image. The base model is not baked in: mount it and point MODEL_PATH at it (k8s/deployment.yaml).
#   CPU:  docker build -t peft-gateway .
#   GPU:  docker build --build-arg ONNXRUNTIME_NODE_INSTALL=cuda12 --build-arg BASE_IMAGE=<Node 20 image with
#         CUDA 12 and cuDNN 9 libraries> -t peft-gateway:cuda .    and run with EXECUTION_PROVIDER=cuda
#   Run:  docker run -p 8000:8000 -v "$PWD/models:/models:ro" -e MODEL_PATH=/models/<model> peft-gateway
ARG BASE_IMAGE=node:20-slim
FROM ${BASE_IMAGE}

# `skip`: the CPU build of onnxruntime is bundled with the package, and its install script would otherwise
# download CUDA libraries. `cuda12` downloads the CUDA execution provider instead.
ARG ONNXRUNTIME_NODE_INSTALL=skip

# GLIBC_TUNABLES: malloc asks for transparent huge pages (where the kernel's THP mode is `madvise`), so the memory
# onnxruntime's sessions fill at start (each session's pre-packed weights, ~2 GB on the first start, before their
# saved form is in MODEL_CACHE_DIR) costs far fewer page faults; npm start sets the same. README.md, "Start-up".
ENV NODE_ENV=production \
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    ADAPTERS_DIR=/data/adapters

WORKDIR /app

# Dependencies first, so source changes reuse this layer. tsx, which runs the TypeScript sources, is a runtime
# dependency; --omit=dev leaves out the compiler, type packages and the SDK used by tests and the load test.
COPY package.json package-lock.json .npmrc ./
RUN ONNXRUNTIME_NODE_INSTALL="${ONNXRUNTIME_NODE_INSTALL}" npm ci --omit=dev --no-audit --no-fund \
    && npm cache clean --force \
    && mkdir -p /data/adapters \
    && chown node:node /data/adapters

COPY tsconfig.json ./
COPY src ./src

# The image's unprivileged `node` user (uid 1000): the application files stay root-owned and read-only to it.
USER node
EXPOSE 8000
# What `npm start` runs, without npm in between: npm exits on SIGTERM without passing it on, which would kill the
# server without its graceful drain. Node as PID 1 runs src/main.ts's SIGTERM handler.
CMD ["node", "--import", "tsx", "src/main.ts"]
