package economy

import "errors"

// ErrBadConfig is returned (wrapped) by the Validate methods of Terms,
// FlapConfig, TrustConfig and BountyConfig when a field is out of range.
// The computing functions never fail: they clamp out-of-range inputs to the
// nearest sensible value, so a caller that skipped Validate still moves only
// sane amounts of money.
var ErrBadConfig = errors.New("economy: bad config")
