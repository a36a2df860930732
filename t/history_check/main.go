// history-check: checks a history of etcd_lock calls recorded by
// t/012_nemesis.pl for linearizability against a mutex, per lock name, with
// Porcupine (github.com/anishathalye/porcupine).
//
// Usage: history-check [-timeout 120s] [-html FILE] HISTORY...
//
// A history file has one operation per line ('#' lines and blank lines are
// skipped), seven fields separated by '|':
//
//	session|name|section|op|outcome|call|return
//
// call and return are integer timestamps (t/012 writes microseconds since
// the epoch, from clock_timestamp() on both nodes of one machine): call is
// taken before the operation was invoked, return after it returned or its
// error was caught, so the real interval lies within [call, return].
// section links the operations of one lock call (unique per file). op and
// outcome are one of:
//
//	lock   ok       the lock call returned a token: the hold began within it
//	lock   failed   it failed in a way that leaves no hold (55P03 timeout)
//	lock   unknown  it failed in a way that leaves the outcome open
//	unlock ok       etcd_unlock returned true: the hold ended within it
//	unlock false    it returned false (the session held nothing any more):
//	                the hold ended by the time it returned (and not before
//	                the call: the token check just before still found it)
//	unlock unknown  it raised an error: the release happens at some moment
//	                after the call (the worker finishes it), unbounded
//	lost   told     the session was told its lease was lost: the hold ended
//	                at an unknown moment within [call, return], where call is
//	                the section's lock invocation and return the moment the
//	                session learnt of the loss
//
// The model (per name): the state is free or held by one hold (one lock
// call's section; a session's holds are told apart, so a release of an
// earlier hold can never end a later one). Operations:
//
//	lock ok:        free -> held(s); illegal otherwise
//	lock failed:    no effect (a timed-out waiter may have waited while the
//	                name was free at moments: the queue is FIFO)
//	lock unknown:   nondeterministic (porcupine.NondeterministicModel): no
//	                effect, or free -> held(s) by a hold no session acts on
//	                and no operation of the history ends (its release by the
//	                worker, after the rolled-back call, is not recorded).
//	                It keeps its recorded [call, return], though the request
//	                may take effect later (a late or duplicated txn): the
//	                no-effect branch is always open and the took-effect one
//	                only blocks the name for good, so no window can change a
//	                verdict. An infinite return time (porcupine's way for an
//	                operation that may take effect at any later moment) gives
//	                the same verdicts but makes rejecting a history
//	                exponential in the number of these before the
//	                violation: on synthetic histories of 1,600-2,900
//	                operations with 30-83 of them, a late violation was
//	                undecided after 30 s, against milliseconds with the
//	                recorded windows.
//	unlock ok/false: held(s) -> free; illegal otherwise
//	unlock unknown: the same, with an infinite return time: the release
//	                happens, if ever, at any moment after the call; since it
//	                can only end its own hold it still has to come before the
//	                next hold of the name, so it costs the search nothing
//	lost:           held(s) -> free, within [lock call, told]
//	unlock after lost: no effect (the hold had ended already); still listed
//
// Prints one summary line (operations, partitions, result, time) on stdout;
// for a partition that is not linearizable, details on stderr. Exits 0 if
// every partition is linearizable, 1 if one is not, 2 on bad input or usage,
// 3 if the check timed out undecided.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

type kind uint8

const (
	kAcquire      kind = iota // lock ok
	kMaybeAcquire             // lock unknown
	kRelease                  // unlock ok/false/unknown, lost
	kNoop                     // lock failed, unlock after a loss
)

// input of one model operation; hold numbers the section (lock call), from 1
type input struct {
	kind kind
	hold int
}

// what a line said, for messages and the visualization
type line struct {
	file    string
	lineno  int
	who     string
	name    string
	section string
	op      string
	outcome string
	call    int64
	ret     int64
}

func (l *line) String() string {
	return fmt.Sprintf("%s:%d %s %s section %s: %s %s [%d, %d]",
		l.file, l.lineno, l.who, l.name, l.section, l.op, l.outcome, l.call, l.ret)
}

const free = 0

// The mutex, per name. A state is an int: 0 = free, h > 0 = held by hold h.
var mutex = porcupine.NondeterministicModel{
	Init: func() []interface{} { return []interface{}{free} },
	Step: func(state, in, _ interface{}) []interface{} {
		s := state.(int)
		i := in.(input)
		switch i.kind {
		case kAcquire:
			if s == free {
				return []interface{}{i.hold}
			}
			return nil
		case kMaybeAcquire:
			if s == free {
				return []interface{}{free, i.hold}
			}
			return []interface{}{s}
		case kRelease:
			if s == i.hold {
				return []interface{}{free}
			}
			return nil
		default:
			return []interface{}{s}
		}
	},
	Hash: func(state interface{}) uint64 {
		// any mixing will do; XOR-combined over the set by ToModel
		x := uint64(state.(int)) + 0x9e3779b97f4a7c15
		x ^= x >> 33
		x *= 0xff51afd7ed558ccd
		x ^= x >> 33
		return x
	},
	DescribeOperation: func(in, _ interface{}) string {
		i := in.(input)
		return [...]string{"acquire", "acquire?", "release", "no-op"}[i.kind] + " #" + strconv.Itoa(i.hold)
	},
	DescribeState: func(state interface{}) string {
		if state.(int) == free {
			return "free"
		}
		return "held #" + strconv.Itoa(state.(int))
	},
	DescribeOperationMetadata: func(m interface{}) string {
		if l, ok := m.(*line); ok {
			return l.String()
		}
		return ""
	},
}

type badInput struct{ msg string }

func bad(format string, a ...interface{}) { panic(badInput{fmt.Sprintf(format, a...)}) }

type section struct {
	first  *line // the lock line
	hold   int
	lost   *line
	unlock *line
}

type counts struct {
	lockOK, lockFailed, lockUnknown, unlockOK, unlockFalse, unlockUnknown, unlockAfterLost, lost int
}

func readHistory(paths []string) (lines []*line, sections map[string]*section) {
	sections = make(map[string]*section)
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			bad("%v", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		n := 0
		for sc.Scan() {
			n++
			text := strings.TrimSpace(sc.Text())
			if text == "" || strings.HasPrefix(text, "#") {
				continue
			}
			fs := strings.Split(text, "|")
			if len(fs) != 7 {
				bad("%s:%d: %d fields, want 7 (session|name|section|op|outcome|call|return)", path, n, len(fs))
			}
			l := &line{file: path, lineno: n, who: fs[0], name: fs[1], section: fs[2], op: fs[3], outcome: fs[4]}
			if l.who == "" || l.name == "" || l.section == "" {
				bad("%s:%d: empty session, name or section", path, n)
			}
			var e1, e2 error
			l.call, e1 = strconv.ParseInt(fs[5], 10, 64)
			l.ret, e2 = strconv.ParseInt(fs[6], 10, 64)
			if e1 != nil || e2 != nil || l.call < 0 || l.ret < l.call || l.ret == math.MaxInt64 {
				bad("%s:%d: bad times %q, %q (want integers, 0 <= call <= return)", path, n, fs[5], fs[6])
			}
			key := path + "\x00" + l.section
			s := sections[key]
			switch l.op + " " + l.outcome {
			case "lock ok", "lock failed", "lock unknown":
				if s != nil {
					bad("%s:%d: section %s has a lock line already (line %d)", path, n, l.section, s.first.lineno)
				}
				sections[key] = &section{first: l, hold: len(sections) + 1}
			case "unlock ok", "unlock false", "unlock unknown", "lost told":
				if s == nil || s.first.outcome != "ok" || s.first.who != l.who || s.first.name != l.name {
					bad("%s:%d: %s without a successful lock of %s by %s earlier in section %s",
						path, n, l.op, l.name, l.who, l.section)
				}
				if l.op == "lost" {
					if s.lost != nil {
						bad("%s:%d: section %s lost twice", path, n, l.section)
					}
					s.lost = l
				} else {
					if s.unlock != nil {
						bad("%s:%d: section %s unlocked twice", path, n, l.section)
					}
					s.unlock = l
				}
			default:
				bad("%s:%d: unknown op/outcome %q %q", path, n, l.op, l.outcome)
			}
			lines = append(lines, l)
		}
		if err := sc.Err(); err != nil {
			bad("%s: %v", path, err)
		}
		f.Close()
	}
	if len(lines) == 0 {
		bad("no operations in %s", strings.Join(paths, ", "))
	}
	return lines, sections
}

func main() {
	timeout := flag.Duration("timeout", 120*time.Second, "give up (exit 3) after this long")
	html := flag.String("html", "", "write porcupine's visualization of the partitions not linearizable to this file")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [-timeout D] [-html FILE] HISTORY...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	os.Exit(run(flag.Args(), *timeout, *html))
}

func run(paths []string, timeout time.Duration, html string) (rc int) {
	defer func() {
		if r := recover(); r != nil {
			b, ok := r.(badInput)
			if !ok {
				panic(r)
			}
			fmt.Fprintf(os.Stderr, "history-check: bad input: %s\n", b.msg)
			fmt.Printf("history-check: bad input\n")
			rc = 2
		}
	}()
	lines, sections := readHistory(paths)

	// build the operations, partitioned by lock name
	var c counts
	clients := make(map[string]int)
	parts := make(map[string][]porcupine.Operation)
	for _, l := range lines {
		s := sections[l.file+"\x00"+l.section]
		in := input{hold: s.hold}
		ret := l.ret
		switch l.op + " " + l.outcome {
		case "lock ok":
			in.kind = kAcquire
			c.lockOK++
		case "lock failed":
			in.kind = kNoop
			c.lockFailed++
		case "lock unknown":
			in.kind = kMaybeAcquire // with its recorded return time (see above)
			c.lockUnknown++
		case "lost told":
			in.kind = kRelease
			c.lost++
		default: // unlock
			switch {
			case s.lost != nil:
				in.kind = kNoop
				c.unlockAfterLost++
			case l.outcome == "unknown":
				in.kind = kRelease
				ret = math.MaxInt64
				c.unlockUnknown++
			case l.outcome == "false":
				in.kind = kRelease
				c.unlockFalse++
			default:
				in.kind = kRelease
				c.unlockOK++
			}
		}
		id, ok := clients[l.who]
		if !ok {
			id = len(clients)
			clients[l.who] = id
		}
		parts[l.name] = append(parts[l.name], porcupine.Operation{
			ClientId: id, Input: in, Call: l.call, Output: nil, Return: ret, Metadata: l})
	}
	names := make([]string, 0, len(parts))
	for n := range parts {
		names = append(names, n)
	}
	sort.Strings(names)

	model := mutex.ToModel()
	start := time.Now()
	deadline := start.Add(timeout)
	var illegal, undecided []string
	for _, n := range names {
		left := time.Until(deadline)
		if left <= 0 {
			undecided = append(undecided, n)
			continue
		}
		switch porcupine.CheckOperationsTimeout(model, parts[n], left) {
		case porcupine.Illegal:
			illegal = append(illegal, n)
		case porcupine.Unknown:
			undecided = append(undecided, n)
		}
	}
	elapsed := time.Since(start)

	var result string
	switch {
	case len(illegal) > 0:
		result = "NOT linearizable (" + strings.Join(illegal, ", ") + ")"
		rc = 1
	case len(undecided) > 0:
		result = "undecided, timed out after " + timeout.String() + " (" + strings.Join(undecided, ", ") + ")"
		rc = 3
	default:
		result = "linearizable"
	}
	fmt.Printf("history-check: %d operations (lock %d: %d ok, %d failed, %d unknown; unlock %d: %d ok, %d false, %d unknown, %d after a loss; lost %d) from %d sessions, %d partitions: %s in %.3f s\n",
		len(lines), c.lockOK+c.lockFailed+c.lockUnknown, c.lockOK, c.lockFailed, c.lockUnknown,
		c.unlockOK+c.unlockFalse+c.unlockUnknown+c.unlockAfterLost, c.unlockOK, c.unlockFalse, c.unlockUnknown,
		c.unlockAfterLost, c.lost, len(clients), len(parts), result, elapsed.Seconds())

	for i, n := range illegal {
		if i > 0 {
			html = "" // one visualization: the first partition's
		}
		explain(model, n, parts[n], timeout, html)
	}
	return rc
}

// explain says where partition n stops being linearizable: the longest
// linearizable prefix porcupine found, and the operations that could not
// follow it (those not in it whose return comes first).
func explain(model porcupine.Model, n string, ops []porcupine.Operation, timeout time.Duration, html string) {
	res, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
	if res != porcupine.Illegal {
		fmt.Fprintf(os.Stderr, "history-check: %s: verbose recheck says %s\n", n, res)
		return
	}
	var longest []int
	for _, p := range info.PartialLinearizations() {
		for _, lin := range p {
			if len(lin) > len(longest) {
				longest = lin
			}
		}
	}
	in := make(map[int]bool, len(longest))
	for _, id := range longest {
		in[id] = true
	}
	fmt.Fprintf(os.Stderr, "history-check: %s: %d operations, longest linearizable prefix %d; it ends with:\n",
		n, len(ops), len(longest))
	for _, id := range longest[max(0, len(longest)-3):] {
		fmt.Fprintf(os.Stderr, "  %s\n", ops[id].Metadata.(*line))
	}
	var rest []int
	for id := range ops {
		if !in[id] {
			rest = append(rest, id)
		}
	}
	sort.Slice(rest, func(a, b int) bool { return ops[rest[a]].Return < ops[rest[b]].Return })
	fmt.Fprintf(os.Stderr, "history-check: %s: and none of these fits after it:\n", n)
	for _, id := range rest[:min(3, len(rest))] {
		fmt.Fprintf(os.Stderr, "  %s\n", ops[id].Metadata.(*line))
	}
	if html != "" {
		if err := porcupine.VisualizePath(model, info, html); err != nil {
			fmt.Fprintf(os.Stderr, "history-check: %s: %v\n", html, err)
		} else {
			fmt.Fprintf(os.Stderr, "history-check: visualization of %s in %s\n", n, html)
		}
	}
}
