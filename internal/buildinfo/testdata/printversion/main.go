// Command printversion prints its --version line; buildinfo's test builds
// it the way `make build` builds the binaries.
package main

import (
	"fmt"

	"github.com/keymesh/keymesh/internal/buildinfo"
)

func main() { fmt.Println(buildinfo.Line("printversion")) }
