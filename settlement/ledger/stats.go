package ledger

// Stats is a summary of the ledger's durable state, for an operator's
// metrics.
type Stats struct {
	Accounts   int    // every account, system accounts included
	OpenHolds  int    // holds neither voided nor expired
	HeldUcr    int64  // what the open holds still reserve
	Transfers  uint64 // transfers committed since the ledger was created
	HoldEvents uint64 // hold events (take, top up, draw, void, expire) committed
	ChainLinks uint64 // links of the signed hash chain: one per batch that moved money or holds
}

// Stats returns the summary of what is durable now. It reads the published
// state under the readers' lock, in O(open holds).
func (l *Ledger) Stats() Stats {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s := Stats{
		Accounts:   len(l.pub.accounts),
		OpenHolds:  len(l.pub.holds),
		Transfers:  l.pub.nextSeq - 1,
		HoldEvents: l.pub.nextEvent - 1,
		ChainLinks: l.pub.head.Seq,
	}
	for _, h := range l.pub.holds {
		s.HeldUcr += h.Remaining
	}
	return s
}
