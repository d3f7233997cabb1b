// Command natsprobe is tf-e2e's attacker on NATS: it exits 0 only when NATS
// refuses what it tries.
//
//	natsprobe no-creds URL             connecting without credentials must fail
//	natsprobe publish URL CREDS SUBJ   publishing on SUBJ with CREDS must be
//	                                   refused (a permissions violation)
//
// Exit status 1 means NATS let the attacker in (the test fails), 2 a usage
// or setup error. Nothing secret is printed.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) == 2 && args[0] == "no-creds" {
		nc, err := nats.Connect(args[1], nats.Timeout(5*time.Second), nats.NoReconnect())
		if err != nil {
			fmt.Printf("natsprobe: refused without credentials: %v\n", err)
			return 0
		}
		defer nc.Close()
		if err := nc.Publish("keymesh.probe", []byte("x")); err == nil {
			err = nc.FlushTimeout(5 * time.Second)
		}
		if err := nc.LastError(); err != nil {
			fmt.Printf("natsprobe: refused without credentials after connecting: %v\n", err)
			return 0
		}
		fmt.Println("natsprobe: FAIL: connected to NATS without credentials")
		return 1
	}
	if len(args) == 4 && args[0] == "publish" {
		errs := make(chan error, 4)
		nc, err := nats.Connect(args[1], nats.UserCredentials(args[2]), nats.Timeout(5*time.Second), nats.NoReconnect(),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			fmt.Printf("natsprobe: cannot connect with the credentials (setup): %v\n", err)
			return 2
		}
		defer nc.Close()
		if err := nc.Publish(args[3], []byte(`{"forged":true}`)); err != nil {
			fmt.Printf("natsprobe: publish refused: %v\n", err)
			return 0
		}
		if err := nc.FlushTimeout(5 * time.Second); err != nil && !errors.Is(err, nats.ErrTimeout) {
			fmt.Printf("natsprobe: publish refused: %v\n", err)
			return 0
		}
		select {
		case err := <-errs:
			if strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				fmt.Printf("natsprobe: publish on %s refused: %v\n", args[3], err)
				return 0
			}
			fmt.Printf("natsprobe: unexpected error: %v\n", err)
			return 2
		case <-time.After(5 * time.Second):
		}
		fmt.Printf("natsprobe: FAIL: published on %s with an edge's credentials\n", args[3])
		return 1
	}
	fmt.Fprintln(os.Stderr, "usage: natsprobe no-creds URL | natsprobe publish URL CREDS SUBJECT")
	return 2
}
