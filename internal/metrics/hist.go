package metrics

import (
	"math"
	"time"
)

// Latency histograms share one fixed log-scale layout, so merging two
// histograms is summing their counters. Bin i holds durations in
// [minLatency·growth^i, minLatency·growth^(i+1)); durations below
// minLatency count in bin 0 and durations past the last bound (≈61.7s) in
// the last bin. A percentile reports its bin's geometric midpoint, which is
// within √growth−1 ≈ 4.9% of every value in the bin, so percentiles between
// 50µs and 60s are within 4.9% of the exact nearest-rank percentile.
const (
	minLatency = 50 * time.Microsecond
	growth     = 1.1
	numBins    = 147 // minLatency·growth^147 ≈ 61.7s ≥ 60s
)

var (
	lnGrowth = math.Log(growth)
	// binLower[i] is bin i's lower bound in nanoseconds; binLower[numBins]
	// is the last bin's nominal upper bound. A table, not state: never written.
	binLower = func() (b [numBins + 1]float64) {
		for i := range b {
			b[i] = float64(minLatency) * math.Pow(growth, float64(i))
		}
		return b
	}()
)

// binOf returns the histogram bin for d.
func binOf(d time.Duration) int {
	x := float64(d)
	if x < binLower[1] {
		return 0
	}
	i := int(math.Log(x/float64(minLatency)) / lnGrowth)
	if i >= numBins {
		return numBins - 1
	}
	// math.Log can round across a bound; the table decides.
	if x < binLower[i] {
		i--
	} else if x >= binLower[i+1] {
		i++
	}
	return min(i, numBins-1)
}

// binMillis is the value reported for bin i: its geometric midpoint, in ms.
func binMillis(i int) float64 {
	return binLower[i] * math.Sqrt(growth) / 1e6
}

// quantile returns the q-quantile (0 < q ≤ 1) of h in milliseconds, by
// nearest rank: the bin holding the ceil(q·total)-th smallest value.
func quantile(h *[numBins]uint64, total uint64, q float64) float64 {
	if total == 0 {
		return 0
	}
	rank := max(uint64(math.Ceil(q*float64(total))), 1)
	var cum uint64
	for i, c := range h {
		cum += c
		if cum >= rank {
			return binMillis(i)
		}
	}
	return binMillis(numBins - 1)
}

// observe counts one latency in bin on b's compact histogram. b.hist covers
// only bins b.histLo … b.histLo+len(b.hist)-1: one time bucket's latencies
// usually cluster within a few bins, so this is a handful of counters rather
// than numBins of them. The slice keeps its capacity when the bucket is
// reset, so a warm series records without allocating.
func (b *bucket) observe(bin int) {
	lo, n := int(b.histLo), len(b.hist)
	switch {
	case n == 0:
		b.hist = append(b.hist[:0], 0)
		b.histLo = uint32(bin)
	case bin < lo:
		shift := lo - bin
		h := growHist(b.hist, n+shift)
		copy(h[shift:], h[:n])
		clear(h[:shift])
		b.hist, b.histLo = h, uint32(bin)
	case bin >= lo+n:
		extra := bin - lo - n + 1
		h := growHist(b.hist, n+extra)
		clear(h[n:])
		b.hist = h
	}
	b.hist[bin-int(b.histLo)]++
}

// growHist returns h resliced to n, reallocating with a little slack (but
// never past numBins) when its capacity is short. The new tail is not
// cleared.
func growHist(h []uint32, n int) []uint32 {
	if n <= cap(h) {
		return h[:n]
	}
	g := make([]uint32, n, min(n+8, numBins))
	copy(g, h)
	return g
}
