// Command mkimage builds reencrypt's container image without a container
// daemon (`make image`): this machine and many CI runners have none. It is
// the Dockerfile's image, made with go-containerregistry instead of docker:
//
//   - the binary cross-built as the Dockerfile builds it (CGO_ENABLED=0,
//     -trimpath, -s -w) with the build stamped through buildinfo's -X
//     variables: version from `git describe`, revision and time of HEAD;
//   - one layer on an empty base (scratch): the binary at Entrypoint, the
//     build machine's CA certificates (KMS, STS and RDS are reached over
//     TLS), and /etc/passwd and /etc/group naming nonroot 65532, the user of
//     distroless's nonroot images and of deploy/job.yaml's securityContext.
//     No shell, no package manager, no other executable;
//   - a config running as 65532:65532 with the OCI labels source, revision,
//     version, created and title.
//
// It writes an OCI image layout (-layout, for crane, skopeo, or a registry
// push) and a docker-loadable tarball (-tar, for `docker load` or `crane
// push`). The same commit and toolchain give the same image digest: every
// timestamp is the commit's time.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/reencrypt/reencrypt/internal/buildinfo"
)

// What the image is; the Dockerfile states the same (a test compares them).
const (
	Entrypoint = "/usr/local/bin/reencrypt"
	User       = "65532:65532" // distroless "nonroot"; deploy/job.yaml runs as it
	CACerts    = "/etc/ssl/certs/ca-certificates.crt"
	Source     = "https://github.com/reencrypt/reencrypt"
	Repository = "ghcr.io/example/reencrypt" // deploy/job.yaml's image
	MainPkg    = "./cmd/reencrypt"
)

// Options say what to build and where to write it.
type Options struct {
	Dir        string // the module's root (where go.mod is)
	Layout     string // OCI image layout directory, replaced; "" writes none
	Tarball    string // docker-loadable tarball; "" writes none
	Repository string // the tarball's tag is Repository:<version>
	Arch       string // GOARCH of the image; the host's when ""
	CACerts    string // CA bundle copied into the image; CACerts when ""
	Stamp      Stamp  // from git when Revision is ""
}

// Stamp is the build the binary, the labels and the tag carry.
type Stamp struct {
	Version  string // git describe, or a Go pseudo-version without a tag
	Revision string // full commit hash
	Time     time.Time
	Modified bool
}

// XFlags are the linker's -X flags that stamp st into internal/buildinfo
// (the Dockerfile passes the same variables).
func (st Stamp) XFlags() string {
	x := func(name, value string) string { return "-X " + buildinfo.Package + "." + name + "=" + value }
	return strings.Join([]string{x("version", st.Version), x("revision", st.Revision),
		x("commitTime", st.Time.UTC().Format(time.RFC3339)), x("modified", fmt.Sprint(st.Modified))}, " ")
}

// LDFlags are the image binary's linker flags: stripped, and stamped.
func (st Stamp) LDFlags() string { return "-s -w " + st.XFlags() }

// Result is what Build made.
type Result struct {
	Image v1.Image
	Tag   name.Tag
	Stamp Stamp
}

func main() {
	var o Options
	flag.StringVar(&o.Dir, "C", ".", "the module's root")
	flag.StringVar(&o.Layout, "layout", "bin/image", "OCI image layout directory to write (replaced); empty: none")
	flag.StringVar(&o.Tarball, "tar", "bin/reencrypt-image.tar", "docker-loadable tarball to write; empty: none")
	flag.StringVar(&o.Repository, "repo", Repository, "repository of the tarball's tag")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "GOARCH of the image (linux only)")
	flag.StringVar(&o.CACerts, "ca-certs", CACerts, "CA certificate bundle copied into the image")
	flag.StringVar(&o.Stamp.Version, "version", "", "version to stamp (default: git describe)")
	flag.StringVar(&o.Stamp.Revision, "revision", "", "revision to stamp (default: git rev-parse HEAD)")
	xflags := flag.Bool("print-xflags", false, "print the -X linker flags that stamp the checkout's build, and build nothing (make build)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "mkimage: unexpected arguments %q\n", flag.Args())
		os.Exit(64)
	}
	if *xflags {
		st, err := resolve(context.Background(), o.Dir, o.Stamp)
		if err != nil {
			fmt.Fprintln(os.Stderr, "mkimage:", err)
			os.Exit(1)
		}
		fmt.Println(st.XFlags())
		return
	}
	r, err := Build(context.Background(), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	digest, err := r.Image.Digest()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	for _, p := range []string{o.Layout, o.Tarball} {
		if p != "" {
			fmt.Printf("%s: %s %s (linux/%s)\n", p, r.Tag.Name(), digest, o.Arch)
		}
	}
}

// Build compiles the binary, assembles the image and writes it.
func Build(ctx context.Context, o Options) (*Result, error) {
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.CACerts == "" {
		o.CACerts = CACerts
	}
	if o.Repository == "" {
		o.Repository = Repository
	}
	st, err := resolve(ctx, o.Dir, o.Stamp)
	if err != nil {
		return nil, err
	}
	tag, err := name.NewTag(o.Repository + ":" + tagOf(st.Version))
	if err != nil {
		return nil, fmt.Errorf("image tag: %w", err)
	}
	certs, err := os.ReadFile(o.CACerts)
	if err != nil {
		return nil, fmt.Errorf("CA certificates for the image: %w", err)
	}
	tmp, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "reencrypt")
	if err := compile(ctx, o.Dir, o.Arch, st, bin); err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	img, err := Assemble(binary, certs, o.Arch, st)
	if err != nil {
		return nil, err
	}
	if o.Layout != "" {
		if err := writeLayout(o.Layout, img, tag); err != nil {
			return nil, fmt.Errorf("write OCI layout %s: %w", o.Layout, err)
		}
	}
	if o.Tarball != "" {
		if err := writeTarball(o.Tarball, img, tag); err != nil {
			return nil, fmt.Errorf("write tarball %s: %w", o.Tarball, err)
		}
	}
	return &Result{Image: img, Tag: tag, Stamp: st}, nil
}

// resolve completes st: from the checkout at dir unless a revision is given.
func resolve(ctx context.Context, dir string, st Stamp) (Stamp, error) {
	if st.Revision == "" {
		var err error
		if st, err = gitStamp(ctx, dir, st.Version); err != nil {
			return st, err
		}
	}
	if st.Version == "" {
		return st, fmt.Errorf("no version to stamp: pass -version")
	}
	if st.Time.IsZero() {
		st.Time = time.Now().UTC().Truncate(time.Second)
	}
	return st, nil
}

// gitStamp reads the build's stamp from the checkout at dir. version, when
// set, is kept.
func gitStamp(ctx context.Context, dir, version string) (Stamp, error) {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return strings.TrimSpace(string(out)), nil
	}
	st := Stamp{Version: version}
	var err error
	if st.Revision, err = git("rev-parse", "HEAD"); err != nil {
		return st, fmt.Errorf("stamp the build from git (or pass -version and -revision): %w", err)
	}
	at, err := git("show", "-s", "--format=%cI", "HEAD")
	if err != nil {
		return st, err
	}
	if st.Time, err = time.Parse(time.RFC3339, at); err != nil {
		return st, fmt.Errorf("commit time %q: %w", at, err)
	}
	st.Time = st.Time.UTC()
	// As the go command decides vcs.modified: any change, untracked files too.
	status, err := git("status", "--porcelain")
	if err != nil {
		return st, err
	}
	st.Modified = status != ""
	if st.Version == "" {
		st.Version, err = git("describe", "--tags", "--match", "v[0-9]*", "--dirty")
		if err != nil {
			// No release tag yet: the pseudo-version the go command would
			// give the module at this commit.
			st.Version = "v0.0.0-" + st.Time.Format("20060102150405") + "-" + st.Revision[:min(12, len(st.Revision))]
			if st.Modified {
				st.Version += "-dirty"
			}
		}
	}
	return st, nil
}

// compile cross-builds the binary as the Dockerfile does.
func compile(ctx context.Context, dir, arch string, st Stamp, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", st.LDFlags(), "-o", out, MainPkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s for linux/%s: %w\n%s", MainPkg, arch, err, b)
	}
	return nil
}

// Assemble makes the image from the binary and the CA bundle: one layer on
// scratch. It is deterministic: the same inputs give the same digest.
func Assemble(binary, caCerts []byte, arch string, st Stamp) (v1.Image, error) {
	layerTar, err := layerFiles(binary, caCerts, st.Time)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: st.Time}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			Entrypoint: []string{Entrypoint},
			User:       User,
			WorkingDir: "/home/nonroot",
			Env:        []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=" + CACerts},
			Labels: map[string]string{
				"org.opencontainers.image.source":      Source,
				"org.opencontainers.image.revision":    st.Revision,
				"org.opencontainers.image.version":     st.Version,
				"org.opencontainers.image.created":     st.Time.UTC().Format(time.RFC3339),
				"org.opencontainers.image.title":       "reencrypt",
				"org.opencontainers.image.description": "Rotate the AWS KMS key protecting envelope-encrypted tokens in Postgres",
			},
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created:   created,
		CreatedBy: "internal/tools/mkimage: reencrypt " + st.Version + ", CA certificates, /etc/passwd",
	}})
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	return mutate.ConfigMediaType(img, types.OCIConfigJSON), nil
}

// layerFiles is the layer's tar, entries in a fixed order, every time the
// commit's.
func layerFiles(binary, caCerts []byte, at time.Time) ([]byte, error) {
	type entry struct {
		mode     int64
		uid      int
		contents []byte // nil: a directory
	}
	files := map[string]entry{
		"etc/":                              {0o755, 0, nil},
		"etc/passwd":                        {0o644, 0, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		"etc/group":                         {0o644, 0, []byte("root:x:0:\nnonroot:x:65532:\n")},
		"etc/ssl/":                          {0o755, 0, nil},
		"etc/ssl/certs/":                    {0o755, 0, nil},
		strings.TrimPrefix(CACerts, "/"):    {0o644, 0, caCerts},
		"home/":                             {0o755, 0, nil},
		"home/nonroot/":                     {0o700, 65532, nil},
		"tmp/":                              {0o1777, 0, nil},
		"usr/":                              {0o755, 0, nil},
		"usr/local/":                        {0o755, 0, nil},
		"usr/local/bin/":                    {0o755, 0, nil},
		strings.TrimPrefix(Entrypoint, "/"): {0o755, 0, binary},
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names) // a directory sorts before what it holds
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := files[n]
		h := &tar.Header{Name: n, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: at, Format: tar.FormatPAX}
		if e.contents == nil {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.contents))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.contents); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tagOf makes a version a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}):
// a pseudo-version's "+dirty" becomes "-dirty".
func tagOf(version string) string {
	t := regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(version, "-")
	t = strings.Trim(t, ".-")
	if t == "" {
		t = "dev"
	}
	return t[:min(128, len(t))]
}

// writeLayout replaces dir with an OCI image layout holding img, its
// descriptor annotated with the tag.
func writeLayout(dir string, img v1.Image, tag name.Tag) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.Name(),
	}))
}

// writeTarball writes the docker-loadable tarball next to its final name
// and renames it, so that an interrupted build leaves no half file.
func writeTarball(path string, img v1.Image, tag name.Tag) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}
