# The operator console's browser test (included by the Makefile).
#   make test-console  Debian's Chromium, driven by playwright-core, logs in to
#                      the console of a real origin + edge + mock upstream and
#                      runs the operator's flow (scripts/ci-console.sh);
#                      screenshots of each page land in test/console/screenshots
.PHONY: test-console

test-console:
	./scripts/ci-console.sh

## console-screenshots: the browser test, then the two screenshots the
## README shows copied to docs/console/.
.PHONY: console-screenshots
console-screenshots: test-console
	mkdir -p docs/console
	cp test/console/screenshots/keys.png test/console/screenshots/deployment-auth.png docs/console/
