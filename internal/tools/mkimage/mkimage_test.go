package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const root = "../../.." // the module's root, from this package

// TestImage is `make image` into a temporary directory, then the image as a
// registry or a runtime would see it: opened from the OCI layout and from
// the tarball (the same image), one layer holding the binary at the
// entrypoint and nothing to run but it, the config's user and labels, and
// the binary itself, run from the layer, printing the stamped revision.
func TestImage(t *testing.T) {
	if _, err := os.Stat(CACerts); err != nil {
		t.Skipf("no CA bundle on this machine to copy into the image: %v", err)
	}
	head := gitOut(t, "rev-parse", "HEAD")
	dir := t.TempDir()
	start := time.Now()
	// No timeout of its own: a cold build cache on a busy machine takes
	// minutes; go test's -timeout bounds it.
	res, err := Build(t.Context(), Options{Dir: root, Layout: filepath.Join(dir, "image"), Tarball: filepath.Join(dir, "image.tar")})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %s", res.Tag.Name(), time.Since(start).Round(time.Millisecond))

	img := fromLayout(t, filepath.Join(dir, "image"))
	fromTar, err := tarball.ImageFromPath(filepath.Join(dir, "image.tar"), nil)
	if err != nil {
		t.Fatalf("open the tarball: %v", err)
	}
	want, got := digest(t, img), digest(t, res.Image)
	if want != got {
		t.Errorf("layout holds %s, Build returned %s", want, got)
	}
	// docker's tarball format keeps no manifest (a reader makes a Docker
	// one, another digest): the same image is the same config and layers.
	if a, b := configAndLayers(t, fromTar), configAndLayers(t, img); !slices.Equal(a, b) {
		t.Errorf("tarball holds config and layers %v, layout %v; want the same image", a, b)
	}
	if mt, err := img.MediaType(); err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %q (%v), want %q", mt, err, types.OCIManifestSchema1)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("config user %q, want 65532:65532 (deploy/job.yaml's runAsUser and runAsGroup)", c.User)
	}
	if !slices.Equal(c.Entrypoint, []string{Entrypoint}) || len(c.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [%s] and no cmd (the Job passes args)", c.Entrypoint, c.Cmd, Entrypoint)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.source":   Source,
		"org.opencontainers.image.revision": head,
		"org.opencontainers.image.version":  res.Stamp.Version,
	} {
		if c.Labels[k] != v || v == "" {
			t.Errorf("label %s = %q, want %q (not empty)", k, c.Labels[k], v)
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	files := layerFilesOf(t, layers[0])
	bin, ok := files[strings.TrimPrefix(Entrypoint, "/")]
	if !ok {
		t.Fatalf("no %s in the layer; it holds %v", Entrypoint, keys(files))
	}
	if bin.mode&0o111 == 0 {
		t.Errorf("%s mode %o: not executable", Entrypoint, bin.mode)
	}
	for name, f := range files {
		base := path.Base(name)
		if slices.Contains([]string{"sh", "bash", "dash", "ash", "zsh", "busybox"}, base) {
			t.Errorf("the layer holds a shell: %s", name)
		}
		if f.typ == tar.TypeReg && f.mode&0o111 != 0 && "/"+name != Entrypoint {
			t.Errorf("the layer holds another executable: %s (%o)", name, f.mode)
		}
		if f.typ == tar.TypeSymlink || f.typ == tar.TypeLink {
			t.Errorf("the layer holds a link: %s", name) // could name a shell elsewhere
		}
	}
	if !strings.Contains(string(files["etc/passwd"].data), ":65532:65532:") {
		t.Errorf("/etc/passwd names no user 65532:\n%s", files["etc/passwd"].data)
	}
	if len(files[strings.TrimPrefix(CACerts, "/")].data) == 0 {
		t.Errorf("%s is empty or missing", CACerts)
	}

	// The binary from the layer, run as the image would run it.
	exe := filepath.Join(dir, "reencrypt")
	if err := os.WriteFile(exe, bin.data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "version")
	cmd.Env = []string{} // nothing inherited: the image's env has no build hints
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", Entrypoint, err, out)
	}
	if !strings.Contains(string(out), "revision:  "+head+"\n") || !strings.Contains(string(out), "reencrypt "+res.Stamp.Version+"\n") {
		t.Errorf("%s version printed\n%s\nwant version %s and revision %s", Entrypoint, out, res.Stamp.Version, head)
	}
}

// TestAssembleIsReproducible: the same binary, certificates and stamp give
// the same image digest (every timestamp is the commit's).
func TestAssembleIsReproducible(t *testing.T) {
	st := Stamp{Version: "v1.2.3", Revision: "0123456789abcdef0123456789abcdef01234567", Time: time.Date(2026, 12, 4, 5, 58, 14, 0, time.UTC)}
	a, err := Assemble([]byte("binary"), []byte("certs"), "amd64", st)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Assemble([]byte("binary"), []byte("certs"), "amd64", st)
	if err != nil {
		t.Fatal(err)
	}
	if da, db := digest(t, a), digest(t, b); da != db {
		t.Errorf("two images of the same inputs: %s and %s", da, db)
	}
	st.Revision = "f" + st.Revision[1:]
	c, err := Assemble([]byte("binary"), []byte("certs"), "amd64", st)
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, c) == digest(t, a) {
		t.Error("another revision gave the same digest")
	}
}

// TestDockerfileMatches: the Dockerfile (which cannot be built here) states
// what mkimage builds: the same -X variables, entrypoint and user, a
// distroless static nonroot base, the same labels.
func TestDockerfileMatches(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	var fromDockerfile []string
	for _, m := range regexp.MustCompile(`-X (\S+)=`).FindAllStringSubmatch(df, -1) {
		fromDockerfile = append(fromDockerfile, m[1])
	}
	var fromMkimage []string
	for _, m := range regexp.MustCompile(`-X (\S+)=`).FindAllStringSubmatch(Stamp{}.LDFlags(), -1) {
		// modified is left out of the Dockerfile: a docker context has no
		// checkout to tell it.
		if !strings.HasSuffix(m[1], ".modified") {
			fromMkimage = append(fromMkimage, m[1])
		}
	}
	if !slices.Equal(fromDockerfile, fromMkimage) {
		t.Errorf("Dockerfile -X %q, mkimage -X %q", fromDockerfile, fromMkimage)
	}
	for _, want := range []string{
		`ENTRYPOINT ["` + Entrypoint + `"]`,
		"\nUSER " + User + "\n",
		"\nFROM gcr.io/distroless/static-debian12:nonroot\n",
		"CGO_ENABLED=0",
		"-trimpath",
		`-ldflags "-s -w`,
		`org.opencontainers.image.source="` + Source + `"`,
		`org.opencontainers.image.revision="${REVISION}"`,
		`org.opencontainers.image.version="${VERSION}"`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

func TestTagOf(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":                  "v1.2.3",
		"v1.2.3-4-gabc1234-dirty": "v1.2.3-4-gabc1234-dirty",
		"v0.0.0-20261204055814-b748d2d5a1b3+dirty": "v0.0.0-20261204055814-b748d2d5a1b3-dirty",
		"(devel)": "devel",
	} {
		if got := tagOf(in); got != want {
			t.Errorf("tagOf(%q) = %q, want %q", in, got, want)
		}
	}
}

type file struct {
	typ  byte
	mode int64
	data []byte
}

func layerFilesOf(t *testing.T, l v1.Layer) map[string]file {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]file{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("read the layer: %v", err)
		}
		var data bytes.Buffer
		if _, err := io.Copy(&data, tr); err != nil {
			t.Fatal(err)
		}
		files[strings.TrimPrefix(path.Clean(h.Name), "/")] = file{typ: h.Typeflag, mode: h.Mode, data: data.Bytes()}
	}
}

func fromLayout(t *testing.T, dir string) v1.Image {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("open the OCI layout: %v", err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("the layout lists %d images, want 1", len(m.Manifests))
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// configAndLayers is the digests of img's config and layers.
func configAndLayers(t *testing.T, img v1.Image) []string {
	t.Helper()
	c, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{c.String()}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d.String())
	}
	return out
}

func gitOut(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

func keys(m map[string]file) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}
