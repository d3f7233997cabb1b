# The Prometheus rules and Grafana dashboard of deploy/monitoring (included
# by the Makefile).
#   make check-monitoring  promtool (Debian's prometheus package, installed by
#                          scripts/promtool.sh when missing and root) checks
#                          the example config and the rules and runs the
#                          rules' unit tests; the Go tests of deploy/monitoring
#                          check the metric names against a real origin and
#                          edge, the runbook sections and the dashboard
#                          (valid JSON, panels, ids, PromQL through promtool).
.PHONY: check-monitoring monitoring-deps

MONITORING := deploy/monitoring

check-monitoring:
	@promtool=$$(./scripts/promtool.sh) && set -x && \
	cd $(MONITORING) && \
	"$$promtool" check config prometheus.yml && \
	"$$promtool" check rules alerts.yml && \
	"$$promtool" test rules alerts_test.yml
	$(GO) test -race -count=1 -timeout 10m ./$(MONITORING)/

# make test runs deploy/monitoring's tests too, and one of them needs
# promtool: test-deps installs it like the other test dependencies (quiet
# when there; without root the test skips, and fails when CI is set).
test-deps: monitoring-deps
monitoring-deps:
	@./scripts/promtool.sh >/dev/null || true
