# reencrypt — every target works from a fresh clone (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
GO ?= go
PKGS := ./...

.PHONY: help build install image test test-race test-short fuzz bench bench-smoke bench-online bench-online-smoke soak demo lint tidy-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/reencrypt, stamped with the checkout's version and commit (`reencrypt version`); `make install` puts it on PATH
	$(GO) build -ldflags "$$($(GO) run ./internal/tools/mkimage -print-xflags)" -o bin/reencrypt ./cmd/reencrypt

# make image: the tarball's tag is $(IMAGE):<version>; IMAGE_ARCH=arm64 cross-builds.
IMAGE ?= ghcr.io/example/reencrypt
IMAGE_ARCH ?=

image: ## container image without a daemon: OCI layout in bin/image/, docker-loadable bin/reencrypt-image.tar (IMAGE=, IMAGE_ARCH=)
	$(GO) run ./internal/tools/mkimage -layout bin/image -tar bin/reencrypt-image.tar -repo $(IMAGE) $(if $(IMAGE_ARCH),-arch $(IMAGE_ARCH))

install: ## go install reencrypt into $(go env GOBIN), else $(go env GOPATH)/bin
	$(GO) install -ldflags "$$($(GO) run ./internal/tools/mkimage -print-xflags)" ./cmd/reencrypt

test: ## all tests with the race detector, real Postgres and KMS emulators (what CI runs)
	$(GO) test -race -count=1 -timeout 20m -json $(PKGS) | $(GO) run ./internal/tools/testsum

test-race: test ## alias of test (the race detector is always on)

test-short: ## the tests without the race detector, faster while editing
	$(GO) test -count=1 -timeout 20m -json $(PKGS) | $(GO) run ./internal/tools/testsum

fuzz: ## fuzz the envelope parser for FUZZTIME (default 60s)
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $${FUZZTIME:-60s} ./pkg/envelope/

bench: ## side-by-side benchmark, 200,000 rows x 3 rounds (BENCH_FLAGS="-rows 1000000"); table on stdout, JSON in bench/results/
	$(GO) run ./bench $(BENCH_FLAGS)

bench-smoke: ## CI-sized benchmark (3,000 rows): every row rotated and correct, KMS calls per row; never asserts timings
	$(GO) run ./bench -smoke

bench-online: ## the harm a rotation does to a live API (primary + streaming replica, KMS quota proxy): table on stdout, JSON in bin/
	@mkdir -p bin
	$(GO) run ./bench/online -json bin/bench-online.json $(BENCH_ONLINE_FLAGS)

bench-online-smoke: ## CI-sized bench-online: pause obeyed, 0 API errors, every row rotated; never asserts timings
	$(GO) run ./bench/online -smoke

soak: ## the long fault scenarios (test/faults, SOAK=1: up to 2 h), then their figures as a table (also in bin/soak-table.md)
	@mkdir -p bin
	@status=0; SOAK=1 $(GO) test -count=1 -timeout 120m -v ./test/faults/ 2>&1 | tee bin/soak.log || status=$$?; \
	echo; $(GO) run ./test/faults/cmd/soaktable < bin/soak.log | tee bin/soak-table.md; exit $$status

demo: ## the main job on a local default: throwaway Postgres + local-kms, 100,000 tokens rotated and verified
	$(GO) run ./demo

lint: ## gofmt, go vet, staticcheck and golangci-lint (.golangci.yaml; both pinned in tools/go.mod)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@# staticcheck is a tool of the tools module; built there, run here on this module.
	"$$($(GO) -C tools tool -n honnef.co/go/tools/cmd/staticcheck)" $(PKGS)
	"$$($(GO) -C tools tool -n github.com/golangci/golangci-lint/v2/cmd/golangci-lint)" run $(PKGS)

tidy-check: ## fail when go mod tidy would change go.mod/go.sum (this module and tools/)
	$(GO) mod tidy -diff
	$(GO) -C tools mod tidy -diff

clean: ## remove build output
	rm -rf bin
