package main

import (
	"flag"
	"fmt"
)

func init() {
	register("freeport", "print N free loopback TCP ports (for scripts that start a stack)", runFreePort)
}

func runFreePort(e *env, args []string) int {
	fs := flag.NewFlagSet("bench freeport", flag.ContinueOnError)
	n := fs.Int("n", 1, "how many distinct ports")
	about := "bench freeport prints --n distinct loopback TCP ports that were free a moment ago, one a line."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	if *n <= 0 || *n > 100 {
		fmt.Fprintln(e.stderr, "bench freeport: --n must be 1..100")
		return 2
	}
	ports, err := freePorts(*n)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench freeport: %v\n", err)
		return 1
	}
	for _, p := range ports {
		fmt.Fprintln(e.stdout, p)
	}
	return 0
}
