package kmsclient_test

import (
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// BenchmarkDecryptCPU measures this process's CPU per KMS Decrypt, the
// client side of a legacy row, against local-kms in its own process, with
// 32 calls in flight as a page's workers make them: through the direct path
// on its own connections, through the direct path over http.Transport (as
// when a proxy applies), and through the SDK's stack. ns/op is mostly the
// emulator's pace; cpu-µs/op is what one call costs the engine.
func BenchmarkDecryptCPU(b *testing.B) {
	for _, path := range []struct {
		name               string
		sdkOnly, transport bool
	}{{"direct", false, false}, {"direct-transport", false, true}, {"sdk", true, false}} {
		b.Run(path.name, func(b *testing.B) { benchmarkDecryptCPU(b, path.sdkOnly, path.transport) })
	}
}

// benchmarkDecryptCPU: sdkOnly is KMS_DIRECT=false; transport sends the
// direct path through http.Transport, as when a proxy applies.
func benchmarkDecryptCPU(b *testing.B, sdkOnly, transport bool) {
	k := testbed.LocalKMS(b)
	for _, kv := range k.Env() {
		name, val, _ := strings.Cut(kv, "=")
		b.Setenv(name, val)
	}
	ctx := context.Background()
	api, err := kmsclient.New(ctx, kmsclient.Options{SDKOnly: sdkOnly})
	if err != nil {
		b.Fatal(err)
	}
	if transport && !kmsclient.ThroughTransport(api) {
		b.Fatal("not the direct path")
	}
	alias := "cpu-" + time.Now().Format("150405.000000")
	if _, err := k.CreateKey(ctx, alias); err != nil {
		b.Fatal(err)
	}
	key, err := kmsclient.Resolve(ctx, api, "alias/"+alias)
	if err != nil {
		b.Fatal(err)
	}
	c := kmsclient.NewClient(api, "payment_methods", nil)
	dek, wdek, err := c.GenerateDataKey(ctx, key.ARN)
	if err != nil {
		b.Fatal(err)
	}
	dek.Zero()
	const inFlight = 32
	b.ResetTimer()
	before := cpuTime()
	var wg sync.WaitGroup
	next := make(chan struct{})
	for range inFlight {
		wg.Go(func() {
			for range next {
				d, err := c.Decrypt(ctx, key.ARN, wdek)
				if err != nil {
					b.Error(err)
					return
				}
				d.Zero()
			}
		})
	}
	for range b.N {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	b.ReportMetric(float64((cpuTime()-before).Microseconds())/float64(b.N), "cpu-µs/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
