package metrics

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestLayoutCoversRange(t *testing.T) {
	if got := time.Duration(binLower[numBins]); got < 60*time.Second {
		t.Fatalf("last bin ends at %v, want >= 60s", got)
	}
	if got := time.Duration(binLower[numBins-1]); got >= 60*time.Second {
		t.Fatalf("numBins too large: bin %d starts at %v", numBins-1, got)
	}
}

func TestBinOf(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{-time.Second, 0},
		{10 * time.Microsecond, 0},
		{minLatency, 0},
		{time.Duration(binLower[1]) + 1, 1},
		{time.Hour, numBins - 1},
	}
	for _, tt := range tests {
		if got := binOf(tt.d); got != tt.want {
			t.Errorf("binOf(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
	// Every bound lands in its own bin, and the value just below it in the previous one.
	for i := 1; i < numBins; i++ {
		lo := time.Duration(math.Ceil(binLower[i]))
		if got := binOf(lo); got != i {
			t.Errorf("binOf(%v) = %d, want %d", lo, got, i)
		}
		if got := binOf(lo - 1); got != i-1 {
			t.Errorf("binOf(%v) = %d, want %d", lo-1, got, i-1)
		}
	}
}

// TestQuantileErrorBound checks percentiles against the exact nearest-rank
// percentile of known distributions.
func TestQuantileErrorBound(t *testing.T) {
	const bound = 0.05
	rng := rand.New(rand.NewPCG(1, 2))
	dists := []struct {
		name string
		gen  func() time.Duration
	}{
		{"constant 3ms", func() time.Duration { return 3 * time.Millisecond }},
		{"uniform 1-1000ms", func() time.Duration { return time.Duration(1+rng.IntN(1000)) * time.Millisecond }},
		{"exponential mean 20ms", func() time.Duration { return time.Duration(rng.ExpFloat64() * 20e6) }},
		{"lognormal median 5ms", func() time.Duration { return time.Duration(5e6 * math.Exp(rng.NormFloat64())) }},
		{"log-uniform 50us-60s", func() time.Duration {
			return time.Duration(float64(minLatency) * math.Exp(rng.Float64()*math.Log(float64(60*time.Second)/float64(minLatency))))
		}},
	}
	for _, dist := range dists {
		t.Run(dist.name, func(t *testing.T) {
			var h [numBins]uint64
			samples := make([]time.Duration, 20000)
			for i := range samples {
				d := max(dist.gen(), minLatency) // below the layout's range values clamp
				samples[i] = d
				h[binOf(d)]++
			}
			slices.Sort(samples)
			for _, q := range []float64{0.5, 0.9, 0.95, 0.99, 0.999} {
				exact := float64(samples[int(math.Ceil(q*float64(len(samples))))-1]) / 1e6
				got := quantile(&h, uint64(len(samples)), q)
				if rel := math.Abs(got-exact) / exact; rel > bound {
					t.Errorf("p%v = %.4fms, exact %.4fms: error %.1f%% > %.0f%%", q*100, got, exact, rel*100, bound*100)
				}
			}
		})
	}
}

func TestQuantileEmpty(t *testing.T) {
	var h [numBins]uint64
	if got := quantile(&h, 0, 0.5); got != 0 {
		t.Fatalf("quantile of nothing = %v, want 0", got)
	}
}

// TestBucketHistMatchesDense checks the compact per-bucket histogram
// against a dense one, growing in both directions and across resets.
func TestBucketHistMatchesDense(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var b bucket
	for round := range 5 {
		var dense [numBins]uint32
		for range 200 {
			bin := rng.IntN(numBins)
			if round%2 == 0 {
				bin = 40 + rng.IntN(10)
			}
			b.observe(bin)
			dense[bin]++
		}
		var got [numBins]uint32
		for i, c := range b.hist {
			got[int(b.histLo)+i] += c
		}
		if got != dense {
			t.Fatalf("round %d: compact histogram differs from dense", round)
		}
		if cap(b.hist) > numBins {
			t.Fatalf("round %d: capacity %d > %d bins", round, cap(b.hist), numBins)
		}
		b.reset()
	}
}
