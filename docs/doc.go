// Package docs holds the repository's documentation (design.md, api.md,
// architecture.md) and the tests that keep it honest: every relative link in
// every Markdown file resolves, to a file and a heading that exist; Go
// comments name only docs that exist; and the import rules architecture.md
// states hold in the tree. It has no code of its own.
package docs
