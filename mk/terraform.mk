# keymesh — deployment targets (deploy/terraform). Included by the Makefile
# through `-include mk/*.mk`.
#
#   make dist       static (CGO_ENABLED=0) linux/amd64 + linux/arm64 builds of
#                   origin, edge and nats-server into dist/linux_<arch>/, with
#                   SHA256SUMS: what the modules install
#   make tf-check   offline: terraform fmt -check, init -backend=false and
#                   validate of every module and example, a plan of each
#                   example, and the variables' validations (scripts/tf-check.sh)
#   make tf-check-all  tf-check with every Terraform (and OpenTofu) of
#                   TF_MATRIX: the oldest supported and a current release
#   make tf-e2e     the modules applied over SSH to a throwaway sshd on
#                   127.0.0.1, checked end to end, destroyed, checked gone
#                   (scripts/tf-e2e.sh; installs openssh-server when root)
#
# Terraform $(TF_VERSION) is built from source with the Go toolchain into
# $(TF_BIN_DIR) when missing (make tf-tools; a few minutes the first time;
# scripts/tf-install.sh). The versions checked are pinned here only.

GO            ?= go
BIN           ?= bin
DIST          ?= dist
DIST_PLATFORMS ?= linux/amd64 linux/arm64
DIST_CMDS     ?= origin edge
NATS_SERVER_PKG ?= github.com/nats-io/nats-server/v2
# The oldest Terraform the modules support (required_version) and what
# tf-check and tf-e2e run; a current release; OpenTofu when it builds.
TF_VERSION    ?= 1.5.7
TF_CURRENT_VERSION ?= 1.13.3
TOFU_VERSION  ?= 1.10.6
TF_MATRIX     ?= terraform@$(TF_VERSION) terraform@$(TF_CURRENT_VERSION) tofu@$(TOFU_VERSION)
TF_BIN_DIR    ?= $(CURDIR)/bin/tools
TERRAFORM     ?= $(TF_BIN_DIR)/terraform
TF_DIR        ?= deploy/terraform
DIST_LDFLAGS  ?= -s -w

.PHONY: dist dist-local tf-tools tf-tools-all tf-check tf-check-all tf-e2e

## dist: CGO_ENABLED=0 builds, one directory per platform.
dist:
	@set -e; for p in $(DIST_PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; out=$(DIST)/$${os}_$${arch}; \
	  mkdir -p $$out; \
	  for c in $(DIST_CMDS); do \
	    echo "dist: $$out/$$c"; \
	    CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(DIST_LDFLAGS) $(LDFLAGS)' -o $$out/$$c ./cmd/$$c; \
	  done; \
	  echo "dist: $$out/nats-server"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(DIST_LDFLAGS)' -o $$out/nats-server $(NATS_SERVER_PKG); \
	  (cd $$out && sha256sum $(DIST_CMDS) nats-server > SHA256SUMS); \
	done

## dist-local: dist for the platform of this machine only (what tf-e2e installs).
dist-local:
	@$(MAKE) --no-print-directory dist DIST_PLATFORMS=linux/$$($(GO) env GOARCH)

## tf-tools: terraform $(TF_VERSION) built from source with the Go toolchain.
tf-tools:
	@TERRAFORM=$(TERRAFORM) TF_VERSION=$(TF_VERSION) GO=$(GO) ./scripts/tf-install.sh

tf-check: tf-tools
	TERRAFORM=$(TERRAFORM) ./scripts/tf-check.sh $(TF_DIR)

# tf_bin IMPL VERSION: where tf-tools-all puts it ($(TERRAFORM) for the
# pinned terraform, so that it is built once).
tf_bin = $(if $(filter terraform@$(TF_VERSION),$(1)@$(2)),$(TERRAFORM),$(TF_BIN_DIR)/$(1)-$(2))

## tf-tools-all: every tool of TF_MATRIX, built when missing.
tf-tools-all:
	@set -e; $(foreach t,$(TF_MATRIX),TF_IMPL=$(word 1,$(subst @, ,$(t))) TF_VERSION=$(word 2,$(subst @, ,$(t))) \
	  TERRAFORM=$(call tf_bin,$(word 1,$(subst @, ,$(t))),$(word 2,$(subst @, ,$(t)))) GO=$(GO) ./scripts/tf-install.sh;)

## tf-check-all: tf-check with each tool of TF_MATRIX.
tf-check-all: tf-tools-all
	@set -e; $(foreach t,$(TF_MATRIX),echo "== tf-check with $(t)"; \
	  TERRAFORM=$(call tf_bin,$(word 1,$(subst @, ,$(t))),$(word 2,$(subst @, ,$(t)))) ./scripts/tf-check.sh $(TF_DIR);)

tf-e2e: tf-tools dist-local
	$(GO) build -o $(BIN)/ ./cmd/origin ./cmd/bench
	TERRAFORM=$(TERRAFORM) BIN=$(BIN) DIST=$(DIST) ./scripts/tf-e2e.sh
