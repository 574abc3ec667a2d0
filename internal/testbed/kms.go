package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// Dummy credentials the emulators accept (they do not check signatures).
const (
	DummyAccessKeyID     = "AKIATESTBEDDUMMYKEY0"
	DummySecretAccessKey = "testbed-dummy-secret-access-key"
)

const (
	kmsRegion = "us-east-1"
	// LocalKMSAccountID is the account in every ARN local-kms hands out.
	LocalKMSAccountID = "111122223333"
	// EnvLocalKMSBin, if set, names a prebuilt local-kms binary to use
	// instead of building github.com/nsmithuk/local-kms.
	EnvLocalKMSBin = "LOCAL_KMS_BIN"
	// MotoInstallHint says how to get moto_server.
	MotoInstallHint = "install it with `pip install 'moto[server]'` so that moto_server is on PATH"
)

// KMSServer is a running KMS emulator (local-kms or moto_server) listening
// on 127.0.0.1.
type KMSServer struct {
	name     string
	endpoint string
	region   string
	dir      string
	out      *ringBuffer
	proc     *proc
	tr       *http.Transport

	clientOnce sync.Once
	client     *kms.Client

	mu      sync.Mutex
	stopped bool
}

var (
	localKMSBuildMu sync.Mutex
	localKMSBinPath string
)

// LocalKMSBinary returns the path of a local-kms binary: $LOCAL_KMS_BIN if
// set; else the tool github.com/nsmithuk/local-kms of the tools module
// (tools/go.mod: test-only tools are kept out of the shipped module's
// graph), built once per process. The repository root is found by walking
// up from the working directory to the go.mod that has a tools/go.mod
// beside it. It asks `go tool -n` in tools/ for the binary, which the go
// command builds and keeps in its build cache (content-addressed, so
// concurrent test binaries cannot clobber each other, and a rebuild is
// never needed while tools/go.sum is unchanged: ~0.15 s warm, ~35 s on a
// cold cache with 2 cores). Should that not yield a binary it falls back to
// `go build -o` into os.UserCacheDir()/reencrypt-testbed. Builds are
// serialized across processes with a lock file there, so `go test ./...`
// builds it only once.
func LocalKMSBinary(ctx context.Context) (string, error) {
	if p := os.Getenv(EnvLocalKMSBin); p != "" {
		return p, nil
	}
	localKMSBuildMu.Lock()
	defer localKMSBuildMu.Unlock()
	if localKMSBinPath != "" {
		return localKMSBinPath, nil
	}
	toolsDir, err := toolsModule()
	if err != nil {
		return "", fmt.Errorf("%w (or set %s)", err, EnvLocalKMSBin)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	cacheDir := filepath.Join(cache, "reencrypt-testbed")
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("testbed: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(cacheDir, "build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()

	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	const pkg = "github.com/nsmithuk/local-kms"

	cmd := exec.CommandContext(ctx, goBin, "tool", "-n", pkg)
	cmd.Dir = toolsDir
	if out, err := cmd.Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		p := strings.TrimSpace(lines[len(lines)-1])
		if fi, err := os.Stat(p); err == nil && filepath.IsAbs(p) && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			localKMSBinPath = p
			return p, nil
		}
	}

	// Fallback: build into a private dir, then rename into place.
	tmp, err := os.MkdirTemp(cacheDir, "build-")
	if err != nil {
		return "", fmt.Errorf("testbed: %w", err)
	}
	defer os.RemoveAll(tmp)
	cmd = exec.CommandContext(ctx, goBin, "build", "-o", filepath.Join(tmp, "local-kms"), pkg)
	cmd.Dir = toolsDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testbed: go build %s in %s: %w\n%s", pkg, toolsDir, err, tailString(string(out), 4096))
	}
	dst := filepath.Join(cacheDir, "local-kms")
	if err := os.Rename(filepath.Join(tmp, "local-kms"), dst); err != nil {
		return "", fmt.Errorf("testbed: %w", err)
	}
	localKMSBinPath = dst
	return dst, nil
}

// lockFile takes an exclusive flock on path, waiting while ctx allows.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("testbed: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("testbed: waiting for %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var (
	localKMSPortRe = regexp.MustCompile(`Local KMS started on [0-9.]+:([0-9]+)`)
	motoPortRe     = regexp.MustCompile(`Running on http://127\.0\.0\.1:([0-9]+)`)
)

// StartLocalKMS starts local-kms (region us-east-1, account 111122223333,
// empty data dir, no seed) and waits until it answers ListKeys. local-kms
// listens on all interfaces; clients always use 127.0.0.1. It is started
// with PORT=0 and the port it bound is read from its log, so there is no
// race for a free port. ctx bounds the build and start-up only.
func StartLocalKMS(ctx context.Context) (*KMSServer, error) {
	bin, err := LocalKMSBinary(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := makeTempDir("kms")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PORT=0",
		"KMS_REGION="+kmsRegion,
		"KMS_ACCOUNT_ID="+LocalKMSAccountID,
		"KMS_DATA_PATH="+filepath.Join(dir, "data"),
		"KMS_SEED_PATH="+filepath.Join(dir, "no-seed.yaml"), // does not exist: no seeding
	)
	return startEmulator(ctx, "local-kms", cmd, dir, localKMSPortRe, 30*time.Second)
}

// StartMoto starts `moto_server -H 127.0.0.1 -p 0` (moto picks a free port
// and logs it) and waits until its KMS answers ListKeys. If moto_server is
// not on PATH the error says how to install it.
//
// Known moto 5.2 divergences from AWS KMS: DisableKey given a key ARN
// (rather than a key id) fails with HTTP 500, and a disabled key still
// encrypts and decrypts. Use local-kms for disabled-key tests.
func StartMoto(ctx context.Context) (*KMSServer, error) {
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		return nil, fmt.Errorf("testbed: moto_server not found on PATH (%v); %s", err, MotoInstallHint)
	}
	bin = resolvePyenvShim(bin, "moto_server")
	dir, err := makeTempDir("moto")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", "0")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1")
	return startEmulator(ctx, "moto_server", cmd, dir, motoPortRe, 60*time.Second)
}

func startEmulator(ctx context.Context, name string, cmd *exec.Cmd, dir string, portRe *regexp.Regexp, timeout time.Duration) (*KMSServer, error) {
	k := &KMSServer{
		name:   name,
		region: kmsRegion,
		dir:    dir,
		out:    newRingBuffer(4<<10, 64<<10),
		tr: &http.Transport{
			Proxy:               nil, // loopback only: never use HTTP(S)_PROXY
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	cmd.Stdout = k.out
	cmd.Stderr = k.out
	pr, err := startProc(cmd)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("testbed: start %s: %w", name, err)
	}
	k.proc = pr

	fail := func(format string, a ...any) (*KMSServer, error) {
		_ = k.Stop()
		return nil, fmt.Errorf("testbed: %s: %s; its output:\n%s", name, fmt.Sprintf(format, a...), k.LogTail())
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-pr.done:
			return nil
		case <-time.After(20 * time.Millisecond):
			return nil
		}
	}

	// 1. The port it bound, from its log.
	for k.endpoint == "" {
		if m := portRe.FindStringSubmatch(k.out.String()); m != nil {
			k.endpoint = "http://127.0.0.1:" + m[1]
			break
		}
		if pr.exited() {
			return fail("exited during start-up (%v)", pr.err)
		}
		if err := wait(); err != nil {
			return fail("no listening port logged: %v", err)
		}
	}

	// 2. Ready when ListKeys succeeds.
	probe := k.newClient(func(o *kms.Options) { o.RetryMaxAttempts = 1 })
	var lastErr error
	for {
		if pr.exited() {
			return fail("exited during start-up (%v)", pr.err)
		}
		attemptCtx, attemptCancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := probe.ListKeys(attemptCtx, &kms.ListKeysInput{})
		attemptCancel()
		if err == nil {
			return k, nil
		}
		lastErr = err
		if err := wait(); err != nil {
			return fail("not ready at %s: %v (last error: %v)", k.endpoint, err, lastErr)
		}
	}
}

func (k *KMSServer) newClient(optFns ...func(*kms.Options)) *kms.Client {
	cfg := aws.Config{
		Region:      k.region,
		Credentials: credentials.NewStaticCredentialsProvider(DummyAccessKeyID, DummySecretAccessKey, ""),
		HTTPClient:  &http.Client{Transport: k.tr},
	}
	optFns = append([]func(*kms.Options){func(o *kms.Options) { o.BaseEndpoint = aws.String(k.endpoint) }}, optFns...)
	return kms.NewFromConfig(cfg, optFns...)
}

// Name is "local-kms" or "moto_server".
func (k *KMSServer) Name() string { return k.name }

// Endpoint returns "http://127.0.0.1:PORT".
func (k *KMSServer) Endpoint() string { return k.endpoint }

// Region returns the AWS region the emulator serves (us-east-1).
func (k *KMSServer) Region() string { return k.region }

// Client returns an SDK client for this emulator with static dummy
// credentials. It ignores the environment and ~/.aws entirely. Its HTTP
// connections are closed by Stop.
func (k *KMSServer) Client(ctx context.Context) (*kms.Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return k.newClient(), nil
}

func (k *KMSServer) adminClient() *kms.Client {
	k.clientOnce.Do(func() { k.client = k.newClient() })
	return k.client
}

// CreateKey creates a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key and returns its
// ARN. If alias is not empty the key also gets alias "alias/<alias>" (a
// leading "alias/" in the argument is accepted).
func (k *KMSServer) CreateKey(ctx context.Context, alias string) (string, error) {
	c := k.adminClient()
	out, err := c.CreateKey(ctx, &kms.CreateKeyInput{
		KeySpec:     types.KeySpecSymmetricDefault,
		KeyUsage:    types.KeyUsageTypeEncryptDecrypt,
		Description: aws.String("testbed key"),
	})
	if err != nil {
		return "", fmt.Errorf("testbed: %s CreateKey: %w", k.name, err)
	}
	arn := aws.ToString(out.KeyMetadata.Arn)
	if alias != "" {
		if !strings.HasPrefix(alias, "alias/") {
			alias = "alias/" + alias
		}
		if _, err := c.CreateAlias(ctx, &kms.CreateAliasInput{
			AliasName:   aws.String(alias),
			TargetKeyId: out.KeyMetadata.KeyId,
		}); err != nil {
			return "", fmt.Errorf("testbed: %s CreateAlias %s: %w", k.name, alias, err)
		}
	}
	return arn, nil
}

// Env returns environment entries that point an AWS SDK in a subprocess at
// this emulator: AWS_ENDPOINT_URL_KMS, AWS_REGION, AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY (dummy), plus an empty AWS_SESSION_TOKEN (so a real
// one inherited from the parent is not sent) and
// AWS_EC2_METADATA_DISABLED=true. Append it to os.Environ(): later entries win.
func (k *KMSServer) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL_KMS=" + k.endpoint,
		"AWS_REGION=" + k.region,
		"AWS_ACCESS_KEY_ID=" + DummyAccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + DummySecretAccessKey,
		"AWS_SESSION_TOKEN=",
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// LogTail returns the first 4 KiB and the last 64 KiB of the emulator's
// output (it logs every call, so only this much is kept, in memory).
func (k *KMSServer) LogTail() string { return k.out.String() }

// Stop kills the emulator's process group, closes the idle connections of
// the clients made by Client and removes its temp dir. A second call is a
// no-op.
func (k *KMSServer) Stop() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return nil
	}
	k.stopped = true
	k.proc.stop(syscall.SIGKILL, 10*time.Second)
	k.tr.CloseIdleConnections()
	if err := os.RemoveAll(k.dir); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	return nil
}

// resolvePyenvShim turns a pyenv shim into the script it stands for. A
// shim runs the real program as its child, not through exec, so the
// parent-death signal would reach only the shim and leave the server
// running; the real script is a plain python program.
func resolvePyenvShim(path, name string) string {
	shims := filepath.Dir(path)
	if filepath.Base(shims) != "shims" {
		return path
	}
	pyenv := filepath.Join(filepath.Dir(shims), "libexec", "pyenv")
	if _, err := os.Stat(pyenv); err != nil {
		return path
	}
	out, err := exec.Command(pyenv, "which", name).Output()
	if err != nil {
		return path
	}
	if real := strings.TrimSpace(string(out)); real != "" {
		return real
	}
	return path
}
