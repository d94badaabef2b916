package route

// timer ends a park or a floor wait at `at` (unix ns).
type timer struct {
	at  int64
	h   Handle
	gen uint32
}

// timerHeap is a min-heap on at, typed so pushes and pops do not allocate.
type timerHeap []timer

func (q *timerHeap) push(t timer) {
	*q = append(*q, t)
	h := *q
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if h[p].at <= h[i].at {
			break
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func (q *timerHeap) pop() timer {
	h := *q
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h[l].at < h[m].at {
			m = l
		}
		if r < n && h[r].at < h[m].at {
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
