package simulations

// event is one thing that happens at a simulated time. Events at the same
// time run in the order they were scheduled (seq), so a run is a pure
// function of the scenario and the seed.
type event struct {
	at   int64 // simulated unix ns
	seq  uint64
	kind kind
	a, b int32 // what the kind says: node, gateway, call
	c    int32
}

type kind uint8

const (
	evArrival  kind = iota // a consumer's call arrives
	evCallEnd              // a call ends: a = call, b = its generation
	evAnnounce             // a node announces its load: a = node
	evDeliver              // an announcement reaches a gateway: a = node, b = gateway, c = in flight less the gateway's own
	evRemove               // a dead node leaves a gateway's tables: a = node, b = its epoch
	evSample               // time series and utilisation samples
	evPublish              // settlement publishes health scores; online time
	evProbe                // settlement probes a node: a = node
	evBounty               // settlement recomputes bounties
	evEpisode              // a failure episode starts (b = 1) or ends (b = 0): a = node
	evChurn                // a node goes down (b = 0) or comes back (b = 1): a = node
	evIdentity             // a node looks at whether to take a fresh identity: a = node
	evFollow               // an operator looks at the bounty board: a = node
	evJoin                 // a node first comes online: a = node
)

// eventHeap is a min-heap on (at, seq), typed so it does not allocate per push.
type eventHeap []event

func (q eventHeap) less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}

func (q *eventHeap) push(e event) {
	*q = append(*q, e)
	h := *q
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func (q *eventHeap) pop() event {
	h := *q
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h.less(l, m) {
			m = l
		}
		if r < n && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	*q = h
	return top
}
