package economy

import "fmt"

// UcrPerCredit is how many micro-credits make one credit (one US dollar of inference).
const UcrPerCredit = 1_000_000

// FormatCredits renders µcr as credits with six decimals, e.g. 4999980 -> "4.999980".
func FormatCredits(ucr int64) string {
	sign := ""
	mag := uint64(ucr)
	if ucr < 0 {
		// Negate in uint64 so math.MinInt64 does not overflow.
		sign, mag = "-", -mag
	}
	return fmt.Sprintf("%s%d.%06d", sign, mag/UcrPerCredit, mag%UcrPerCredit)
}
