package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func init() {
	register("probe", "exit 0 when a URL answers 2xx, or a given status (checks without curl)", runProbe)
	register("demo", "log in to an origin and make sure a demo deployment exists", runDemo)
}

func runProbe(e *env, args []string) int {
	fs := flag.NewFlagSet("bench probe", flag.ContinueOnError)
	timeout := fs.Duration("timeout", time.Second, "how long the request may take")
	keyEnv := fs.String("key-env", "", "send X-API-Key with the value of this environment variable (keeps the key off the command line)")
	expect := fs.Int("expect", 0, "exit 0 only if the status is this one (0: any 2xx)")
	printStatus := fs.Bool("print-status", false, "print the status code on stdout")
	body := fs.Bool("body", false, "print the response body on stdout")
	about := "bench probe URL exits 0 if GET URL answers 2xx (or --expect) within --timeout, 1 otherwise."
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if code, done := parseFlags(e, fs, about, args); done {
			return code
		}
		fmt.Fprintln(e.stderr, "bench probe: want a URL (see --help)")
		return 2
	}
	url := args[0]
	if code, done := parseFlags(e, fs, about, args[1:]); done {
		return code
	}
	ctx, cancel := context.WithTimeout(e.ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench probe: %v\n", err)
		return 2
	}
	if *keyEnv != "" {
		key := e.getenv(*keyEnv)
		if key == "" {
			fmt.Fprintf(e.stderr, "bench probe: $%s is empty\n", *keyEnv)
			return 2
		}
		req.Header.Set("X-API-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench probe: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if *printStatus {
		fmt.Fprintln(e.stdout, resp.StatusCode)
	}
	if *body {
		if _, err := io.Copy(e.stdout, io.LimitReader(resp.Body, 16<<20)); err != nil {
			fmt.Fprintf(e.stderr, "bench probe: reading the body: %v\n", err)
			return 1
		}
	}
	if ok := resp.StatusCode/100 == 2; (*expect == 0 && !ok) || (*expect != 0 && resp.StatusCode != *expect) {
		fmt.Fprintf(e.stderr, "bench probe: %s answered %d\n", url, resp.StatusCode)
		return 1
	}
	return 0
}

func runDemo(e *env, args []string) int {
	fs := flag.NewFlagSet("bench demo", flag.ContinueOnError)
	origin := fs.String("origin", "http://127.0.0.1:7000", "the origin's admin API")
	passwordFile := fs.String("password-file", "./data/origin/admin-password",
		"file holding the admin password (ORIGIN_ADMIN_PASSWORD, if set, wins)")
	project := fs.String("project", "default", "project of the deployment")
	deployment := fs.String("deployment", "demo", "deployment name")
	upstream := fs.String("upstream", "http://127.0.0.1:8000", "inference server the deployment sends requests to")
	about := "bench demo logs in to an origin as admin and creates the demo deployment unless it exists."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	password := e.getenv("ORIGIN_ADMIN_PASSWORD")
	if password == "" {
		b, err := os.ReadFile(*passwordFile)
		if err != nil {
			fmt.Fprintf(e.stderr, "bench demo: reading admin password: %v\n", err)
			return 1
		}
		password = strings.TrimSpace(string(b))
	}
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	c := &bench.OriginClient{BaseURL: *origin}
	if err := c.Login(ctx, "admin", password); err != nil {
		fmt.Fprintf(e.stderr, "bench demo: %v\n", err)
		return 1
	}
	d, err := c.EnsureDeployment(ctx, *project, *deployment, []string{*upstream})
	if err != nil {
		fmt.Fprintf(e.stderr, "bench demo: %v\n", err)
		return 1
	}
	fmt.Fprintf(e.stdout, "deployment %q (%s) sends requests to %s\n", d.Name, d.ID, *upstream)
	return 0
}
