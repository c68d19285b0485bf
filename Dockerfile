# logist itself as an image. Run it on a Docker host with the engine's socket and the jobs root
# mounted at the same path, e.g.
#   docker run --rm -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /srv/logist:/srv/logist -e LOGIST_JOBS_DIR=/srv/logist logist/logist:latest doctor
# The build context must hold wheels of logist and its dependencies in build/wheels
# (scripts/build-images.sh makes them), so the image builds without a package index.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN if command -v git >/dev/null && python3 -c "import ensurepip" 2>/dev/null; then \
      echo "base image already has git and python3-venv"; \
    else \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        git ca-certificates python3 python3-venv && rm -rf /var/lib/apt/lists/*; \
    fi
COPY build/wheels /tmp/wheels
RUN python3 -m venv /opt/logist \
 && /opt/logist/bin/pip install --no-index --find-links /tmp/wheels logist \
 && rm -rf /tmp/wheels
ENV PATH=/opt/logist/bin:$PATH
ENTRYPOINT ["logist"]
CMD ["--help"]
