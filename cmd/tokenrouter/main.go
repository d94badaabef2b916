// Command tokenrouter is the whole Token-Router network in one binary: the
// node operators run, the gateway consumers call, the platform's settlement
// peer, bootstrap peers, the synthetic engine and `dev`, which runs the
// whole mesh on this machine.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		if !errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "tokenrouter:", err)
		}
		os.Exit(1)
	}
}
