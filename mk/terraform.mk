# keymesh — deployment targets (deploy/terraform). Included by the Makefile
# through `-include mk/*.mk`.
#
#   make dist       static linux/amd64 + linux/arm64 builds of origin, edge and
#                   nats-server into dist/linux_<arch>/ (what the modules install)
#   make tf-check   terraform fmt -check + init -backend=false + validate, offline,
#                   on every module and example
#   make tf-e2e     apply modules/site over SSH to a throwaway sshd on 127.0.0.1,
#                   check the installed edge, destroy, check nothing is left
#
# Terraform 1.5.7 is installed by `go install` into $(TF_BIN_DIR) when missing.

GO            ?= go
BIN           ?= bin
DIST          ?= dist
DIST_PLATFORMS ?= linux/amd64 linux/arm64
DIST_CMDS     ?= origin edge
NATS_SERVER_PKG ?= github.com/nats-io/nats-server/v2
TF_VERSION    ?= 1.5.7
TF_BIN_DIR    ?= $(CURDIR)/bin/tools
TERRAFORM     ?= $(TF_BIN_DIR)/terraform
TF_DIR        ?= deploy/terraform
DIST_LDFLAGS  ?= -s -w

.PHONY: dist dist-local tf-tools tf-check tf-e2e

## dist: CGO_ENABLED=0 builds, one directory per platform.
dist:
	@set -e; for p in $(DIST_PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; out=$(DIST)/$${os}_$${arch}; \
	  mkdir -p $$out; \
	  for c in $(DIST_CMDS); do \
	    echo "dist: $$out/$$c"; \
	    CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(DIST_LDFLAGS)' -o $$out/$$c ./cmd/$$c; \
	  done; \
	  echo "dist: $$out/nats-server"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(DIST_LDFLAGS)' -o $$out/nats-server $(NATS_SERVER_PKG); \
	  (cd $$out && sha256sum $(DIST_CMDS) nats-server > SHA256SUMS); \
	done

## dist-local: only the platform of this machine (what tf-e2e installs).
dist-local:
	@$(MAKE) --no-print-directory dist DIST_PLATFORMS=linux/$$($(GO) env GOARCH) DIST_CMDS=edge

## tf-tools: terraform $(TF_VERSION) built from source with the Go toolchain.
tf-tools:
	@TERRAFORM=$(TERRAFORM) TF_VERSION=$(TF_VERSION) GO=$(GO) ./scripts/tf-install.sh

tf-check: tf-tools
	TERRAFORM=$(TERRAFORM) ./scripts/tf-check.sh $(TF_DIR)

tf-e2e: tf-tools dist-local
	$(GO) build -o $(BIN)/ ./cmd/origin ./cmd/bench
	TERRAFORM=$(TERRAFORM) BIN=$(BIN) DIST=$(DIST) ./scripts/tf-e2e.sh
