// A test client for etcd's own leader election (clientv3/concurrency.Election),
// for t/018_election.pl. The election NAME is used exactly as the SQL side
// names it: concurrency.NewElection(session, NAME) puts "NAME/<lease hex>".
//
//	go-election MODE -ep HOST:PORT -name NAME [flags]
//
//	campaign -value V -hold D [-proclaim V2 -after D2] [-ttl S]
//	    prints "campaigning key=K", blocks until leader, prints
//	    "leader key=K rev=R"; holds D (counted from winning); with -proclaim,
//	    proclaims V2 D2 after winning and prints "proclaimed"; then resigns
//	    ("resigned") and exits 0. SIGTERM/SIGINT: resign first, exit 0.
//	leader
//	    "leader value=V rev=R modrev=M lease=HEX" or "noleader"
//	observe -count N -timeout D
//	    one line "observed value=V rev=R modrev=M" per response of
//	    Election.Observe (its first is the current leader, if any); exits 0
//	    after N lines, 2 at the timeout.
//
// Errors go to stderr with exit status 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	client "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("go-election: ")
	args := os.Args[1:]
	mode := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		mode, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("go-election", flag.ExitOnError)
	ep := fs.String("ep", "127.0.0.1:2379", "etcd client endpoint host:port")
	name := fs.String("name", "", "election name (keys NAME/<lease hex>)")
	value := fs.String("value", "", "campaign: the value to campaign with")
	hold := fs.Duration("hold", 0, "campaign: how long to lead before resigning")
	proclaim := fs.String("proclaim", "", "campaign: a value to proclaim while leading")
	after := fs.Duration("after", 0, "campaign: proclaim this long after winning")
	ttl := fs.Int("ttl", 60, "session lease TTL in seconds")
	count := fs.Int("count", 1, "observe: exit after this many lines")
	timeout := fs.Duration("timeout", 30*time.Second, "observe: give up (exit 2) after this")
	fs.Parse(args)
	if mode == "" && fs.NArg() > 0 {
		mode = fs.Arg(0)
	}
	if *name == "" {
		log.Fatal("-name is required")
	}

	c, err := client.New(client.Config{Endpoints: []string{*ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s, err := concurrency.NewSession(c, concurrency.WithTTL(*ttl))
	if err != nil {
		log.Fatal(err)
	}
	e := concurrency.NewElection(s, *name)

	switch mode {
	case "campaign":
		os.Exit(campaign(s, e, *name, *value, *hold, *proclaim, *after))
	case "leader":
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := e.Leader(ctx)
		cancel()
		if errors.Is(err, concurrency.ErrElectionNoLeader) {
			fmt.Println("noleader")
		} else if err != nil {
			fatal(s, err)
		} else {
			kv := resp.Kvs[0]
			fmt.Printf("leader value=%s rev=%d modrev=%d lease=%x\n",
				kv.Value, kv.CreateRevision, kv.ModRevision, kv.Lease)
		}
		s.Close()
	case "observe":
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		n := 0
		for resp := range e.Observe(ctx) {
			kv := resp.Kvs[0]
			fmt.Printf("observed value=%s rev=%d modrev=%d\n", kv.Value, kv.CreateRevision, kv.ModRevision)
			if n++; n >= *count {
				break
			}
		}
		err := ctx.Err()
		cancel()
		s.Close()
		if n >= *count {
			return
		}
		if errors.Is(err, context.DeadlineExceeded) {
			log.Printf("timeout after %d of %d lines", n, *count)
			os.Exit(2)
		}
		log.Fatal("observe ended early")
	default:
		fatal(s, fmt.Errorf("unknown mode %q (campaign | leader | observe)", mode))
	}
}

func fatal(s *concurrency.Session, err error) {
	s.Close()
	log.Fatal(err)
}

// campaign runs the campaign mode and returns the exit status.
func campaign(s *concurrency.Session, e *concurrency.Election, name, value string,
	hold time.Duration, proclaim string, after time.Duration) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-sig
		cancel()
	}()
	defer s.Close()

	fmt.Printf("campaigning key=%s/%x\n", name, s.Lease())
	if err := e.Campaign(ctx, value); err != nil {
		if ctx.Err() != nil { // signalled: Campaign resigned (removed its key)
			fmt.Println("resigned")
			return 0
		}
		log.Print("campaign: ", err)
		return 1
	}
	fmt.Printf("leader key=%s rev=%d\n", e.Key(), e.Rev())
	won := time.Now()

	status := 0
	wait := func(d time.Duration) bool { // false: signalled or lease lost
		select {
		case <-time.After(d):
			return true
		case <-ctx.Done():
			return false
		case <-s.Done():
			log.Print("session lease lost")
			status = 1
			return false
		}
	}
	ok := true
	if proclaim != "" {
		if ok = wait(after); ok {
			pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := e.Proclaim(pctx, proclaim)
			pcancel()
			if err != nil {
				log.Print("proclaim: ", err)
				status = 1
			} else {
				fmt.Println("proclaimed")
			}
		}
	}
	if ok && status == 0 {
		wait(time.Until(won.Add(hold)))
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if err := e.Resign(rctx); err != nil {
		log.Print("resign: ", err)
		return 1
	}
	fmt.Println("resigned")
	return status
}
