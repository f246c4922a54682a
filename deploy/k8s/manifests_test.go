package k8s

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/vmexec/vmexec/internal/membership/kubetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.Stop()
	os.Exit(code)
}

// manifest is one object of one file.
type manifest struct {
	file string
	obj  *unstructured.Unstructured
}

func (m manifest) String() string { return m.file + ": " + m.obj.GetKind() + " " + m.obj.GetName() }

// load decodes every object of every manifest file (not kustomization.yaml), the
// Namespace first.
func load(t *testing.T) []manifest {
	t.Helper()
	files, err := fs.Glob(Files, "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []manifest
	for _, f := range files {
		if f == "kustomization.yaml" {
			continue
		}
		b, err := Files.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			out = append(out, manifest{f, &u})
		}
	}
	slices.SortStableFunc(out, func(a, b manifest) int {
		return cmpBool(b.obj.GetKind() == "Namespace", a.obj.GetKind() == "Namespace")
	})
	if len(out) == 0 {
		t.Fatal("no manifests found")
	}
	return out
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// cluster is a real kube-apiserver with clients.
type cluster struct {
	cfg    *rest.Config
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newCluster(t *testing.T, cfg *rest.Config) *cluster {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{cfg: cfg, dyn: dynamic.NewForConfigOrDie(cfg), mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// apply is a server-side apply of obj with strict field validation: an unknown or
// duplicated field is an error, not a warning. dryRun validates and admits without
// storing.
func (c *cluster) apply(ctx context.Context, obj *unstructured.Unstructured, dryRun bool, validation string) error {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	var r dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if ns := obj.GetNamespace(); ns != "" {
		r = c.dyn.Resource(m.Resource).Namespace(ns)
	}
	body, err := obj.MarshalJSON()
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "vmexec-manifests-test", Force: new(true), FieldValidation: validation}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = r.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, opts)
	return err
}

var (
	applyOnce sync.Once
	applyErr  error
)

// applyAll applies every manifest for real, once per test binary (the tests below
// need them in place); secret.example.yaml included, so the mounts resolve.
func applyAll(t *testing.T) *cluster {
	t.Helper()
	c := newCluster(t, kubetest.Config(t))
	applyOnce.Do(func() {
		var errs []error
		for _, m := range load(t) {
			if err := c.apply(context.Background(), m.obj, false, metav1.FieldValidationStrict); err != nil {
				errs = append(errs, errors.New(m.String()+": "+err.Error()))
			}
		}
		applyErr = errors.Join(errs...)
	})
	if applyErr != nil {
		t.Fatalf("applying deploy/k8s to the API server:\n%v", applyErr)
	}
	return c
}

// Every manifest is accepted by a real kube-apiserver v1.37 (schema, strict fields,
// defaulting, admission), first as a dry run of every object, then stored for real.
func TestManifestsApplyToRealAPIServer(t *testing.T) {
	c := newCluster(t, kubetest.Config(t))
	ctx := context.Background()
	ms := load(t)
	// The Namespace must exist before a dry run of the objects in it.
	if err := c.apply(ctx, ms[0].obj, false, metav1.FieldValidationStrict); err != nil {
		t.Fatalf("%s: %v", ms[0], err)
	}
	for _, m := range ms[1:] {
		if err := c.apply(ctx, m.obj, true, metav1.FieldValidationStrict); err != nil {
			t.Errorf("dry run %s: %v", m, err)
		}
	}
	applyAll(t)
	for _, m := range ms {
		gvk := m.obj.GroupVersionKind()
		mp, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.dyn.Resource(mp.Resource).Namespace(m.obj.GetNamespace()).Get(ctx, m.obj.GetName(), metav1.GetOptions{}); err != nil {
			t.Errorf("%s not stored: %v", m, err)
		}
	}
}

// create is a create (POST, as `kubectl create` and client-side `kubectl apply` send)
// of a renamed copy of obj, dry run, with the given field validation.
func (c *cluster) create(ctx context.Context, obj *unstructured.Unstructured, validation string) error {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	o := obj.DeepCopy()
	o.SetName(o.GetName() + "-typo-check")
	_, err = c.dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Create(ctx, o,
		metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: validation})
	return err
}

// A typo'd or mistyped field in any manifest is refused by the API server, so these
// tests catch it, whichever way the manifests are sent: a server-side apply refuses an
// unknown field always (with a 500, a known quirk of apply); a create does only with
// fieldValidation=Strict (400) and otherwise drops the field with a warning and the
// mistake would ship (checked here too: that is why the tests ask for Strict).
func TestManifestTyposRejected(t *testing.T) {
	c := newCluster(t, kubetest.Config(t))
	ctx := context.Background()
	ms := load(t)
	if err := c.apply(ctx, ms[0].obj, false, metav1.FieldValidationStrict); err != nil {
		t.Fatalf("%s: %v", ms[0], err)
	}
	find := func(kind string) *unstructured.Unstructured {
		for _, m := range ms {
			if m.obj.GetKind() == kind {
				return m.obj.DeepCopy()
			}
		}
		t.Fatalf("no %s in deploy/k8s", kind)
		return nil
	}
	set := func(kind string, value any, path ...string) *unstructured.Unstructured {
		o := find(kind)
		if err := unstructured.SetNestedField(o.Object, value, path...); err != nil {
			t.Fatal(err)
		}
		return o
	}
	container := func(kind, field string, value any) *unstructured.Unstructured {
		o := find(kind)
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		cs[0].(map[string]any)[field] = value
		if err := unstructured.SetNestedSlice(o.Object, cs, "spec", "template", "spec", "containers"); err != nil {
			t.Fatal(err)
		}
		return o
	}
	for _, tc := range []struct {
		name    string
		obj     *unstructured.Unstructured
		want    string
		unknown bool // an unknown field (dropped with a warning unless strict)
	}{
		{"daemonset hostNetwrk", set("DaemonSet", true, "spec", "template", "spec", "hostNetwrk"), "hostNetwrk", true},
		{"daemonset container readinesProbe", container("DaemonSet", "readinesProbe", map[string]any{"httpGet": map[string]any{"path": "/health", "port": "http"}}), "readinesProbe", true},
		{"service clusterIp", set("Service", "None", "spec", "clusterIp"), "clusterIp", true},
		{"pdb minAvailible", set("PodDisruptionBudget", int64(1), "spec", "minAvailible"), "minAvailible", true},
		{"role rule resourceName", set("Role", []any{map[string]any{"apiGroups": []any{"discovery.k8s.io"}, "resources": []any{"endpointslices"}, "verbs": []any{"list"}, "resourceName": []any{"vmexec-daemons"}}}, "rules"), "resourceName", true},
		{"deployment replicas as text", set("Deployment", "two", "spec", "replicas"), "replicas", false},
		{"daemonset privileged as text", container("DaemonSet", "securityContext", map[string]any{"privileged": "yes"}), "privileged", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.apply(ctx, tc.obj, true, metav1.FieldValidationStrict); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("server-side apply: err %v, want one naming %q", err, tc.want)
			}
			err := c.create(ctx, tc.obj, metav1.FieldValidationStrict)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("strict create: err %v, want one naming %q", err, tc.want)
			} else if !apierrors.IsBadRequest(err) {
				t.Errorf("strict create: err %v, want 400", err)
			}
			if tc.unknown {
				if err := c.create(ctx, tc.obj, metav1.FieldValidationIgnore); err != nil {
					t.Errorf("create with fieldValidation=Ignore: want the typo to slip through (why Strict), got %v", err)
				}
			}
		})
	}
}

// kustomization.yaml applies every manifest but the example Secret.
func TestKustomizationListsEveryManifest(t *testing.T) {
	b, err := Files.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `yaml:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	files, _ := fs.Glob(Files, "*.yaml")
	var want []string
	for _, f := range files {
		if f != "kustomization.yaml" && f != "secret.example.yaml" {
			want = append(want, f)
		}
	}
	got := slices.Clone(k.Resources)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources %v, want %v", got, want)
	}
}
