# reencrypt's container image. Build it from the repository's root:
#
#   docker build \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(git show -s --format=%cI HEAD) \
#     -t ghcr.io/you/reencrypt:vX .
#
# Without a container daemon, `make image` builds the same image (one layer
# on scratch instead of distroless; internal/tools/mkimage), and a test
# checks that both state the same entrypoint, user and -X variables.

ARG GO_VERSION=1.26.8

# A static binary, built on the builder's own platform and cross-compiled for
# the target's (docker buildx build --platform linux/amd64,linux/arm64).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
# Set by BuildKit for each --platform (empty, i.e. the builder's own, otherwise).
ARG TARGETOS
ARG TARGETARCH
# The build's stamp (internal/buildinfo): the context has no .git.
ARG VERSION=(devel)
ARG REVISION=
ARG CREATED=
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -buildvcs=false \
      -ldflags "-s -w \
        -X github.com/reencrypt/reencrypt/internal/buildinfo.version=${VERSION} \
        -X github.com/reencrypt/reencrypt/internal/buildinfo.revision=${REVISION} \
        -X github.com/reencrypt/reencrypt/internal/buildinfo.commitTime=${CREATED}" \
      -o /out/reencrypt ./cmd/reencrypt

# Static, nonroot, no shell: CA certificates, /etc/passwd with nonroot 65532,
# tzdata; nothing to exec into but the binary.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=(devel)
ARG REVISION=
ARG CREATED=
LABEL org.opencontainers.image.source="https://github.com/reencrypt/reencrypt" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.title="reencrypt" \
      org.opencontainers.image.description="Rotate the AWS KMS key protecting envelope-encrypted tokens in Postgres"
COPY --from=build /out/reencrypt /usr/local/bin/reencrypt
# deploy/job.yaml's securityContext runs as 65532:65532 (runAsNonRoot).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/reencrypt"]
