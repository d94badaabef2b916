// Package p2p is Token-Router's libp2p layer: host and identity, the files a
// running role writes for scripts (addrs, peer-id, ready, http-addr), peer
// discovery through bootstrap peers, framed stream protocols and the wire
// types every role shares (inference requests, load announcements, node
// claims, receipts and settlement calls).
//
// Protocols:
//
//	/tokenrouter/infer/1     gateway -> node: one inference call per stream (frames, see frame.go)
//	/tokenrouter/settle/1    node, gateway -> settlement peer: one JSON request/response per stream
//	/tokenrouter/discover/1  anyone -> anyone: the addresses a peer knows for another peer
//	/tokenrouter/swim/packet/1, /tokenrouter/swim/stream/1
//	                         membership: memberlist's SWIM packets and push/pull (membership.go)
//	/tokenrouter/kad/1.0.0   a private Kademlia DHT, for peer routing only (dht.go)
//	circuit relay v2, AutoNAT, DCUtR: libp2p's own, for peers behind NAT (nat.go)
//
// GossipSub topics:
//
//	tokenrouter/load/1       signed load announcements from nodes (see announce.go)
package p2p
