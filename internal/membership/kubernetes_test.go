package membership

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/vmexec/vmexec/internal/membership/kubetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.Stop()
	os.Exit(code)
}

// ep is a hand-made endpoint of a daemon pod on a Kubernetes node.
func ep(node, ip string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)},
		NodeName:   ptr.To(node),
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: "vmexec-daemon-" + node, Namespace: "vmexec"},
	}
}

func slice(name, service string, port int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
}

// newNamespace makes a fresh namespace on the real API server for one test.
func newNamespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: strings.Trim(name, "-") + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// The router's view of the daemons follows EndpointSlices on a real kube-apiserver:
// ready and not-ready endpoints, a node added, a node's readiness flipping, a node
// removed, and slices of other Services ignored.
func TestKubernetesEndpointSlices(t *testing.T) {
	cfg := kubetest.Config(t)
	cs := kubernetes.NewForConfigOrDie(cfg)
	api, err := NewEndpointSliceClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := newNamespace(t, cs)
	slices := cs.DiscoveryV1().EndpointSlices(ns)
	create := func(s *discoveryv1.EndpointSlice) {
		t.Helper()
		if _, err := slices.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Before the router starts: one slice with a ready and a not-ready daemon, and a
	// slice of another Service on the same pods' network that must not count.
	create(slice("vmexec-daemons-a", "vmexec-daemons", 8080, ep("node-1", "10.1.0.1", true), ep("node-2", "10.1.0.2", false)))
	create(slice("other-x", "other", 9090, ep("node-9", "10.9.0.9", true)))

	m, err := NewKubernetes(KubernetesConfig{Client: api, Namespace: ns, Service: "vmexec-daemons", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	want := func(what string, expect ...Node) {
		t.Helper()
		waitFor(t, m, what, func(got []Node) bool { return fmt.Sprint(got) == fmt.Sprint(expect) })
	}
	n1 := Node{Name: "node-1", Address: "10.1.0.1:8080", Ready: true, Load: -1}
	n2 := Node{Name: "node-2", Address: "10.1.0.2:8080", Ready: false, Load: -1}
	want("the initial list", n1, n2)

	// A third node joins in a second slice (the controller splits large Services).
	create(slice("vmexec-daemons-b", "vmexec-daemons", 8080, ep("node-3", "10.1.0.3", true)))
	n3 := Node{Name: "node-3", Address: "10.1.0.3:8080", Ready: true, Load: -1}
	want("node-3 added", n1, n2, n3)

	// node-2 becomes ready and node-1 not ready (its readiness probe failing).
	s, err := slices.Get(ctx, "vmexec-daemons-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints = []discoveryv1.Endpoint{ep("node-1", "10.1.0.1", false), ep("node-2", "10.1.0.2", true)}
	if _, err := slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	n1.Ready, n2.Ready = false, true
	want("readiness flipped", n1, n2, n3)

	// node-1 leaves (its pod deleted: the controller drops the endpoint).
	s, err = slices.Get(ctx, "vmexec-daemons-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints = s.Endpoints[1:]
	if _, err := slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("node-1 removed", n2, n3)

	// A slice deleted takes its nodes with it; relabelling a slice to another Service
	// takes it out of the view (the label filter is on the server side).
	if err := slices.Delete(ctx, "vmexec-daemons-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want("node-3's slice deleted", n2)
	s, err = slices.Get(ctx, "vmexec-daemons-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Labels[discoveryv1.LabelServiceName] = "other"
	if _, err := slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("every slice gone")
}

// A Members whose API server cannot be reached reports that its view is not synced
// when the caller's context ends, instead of an empty (all nodes gone) view.
func TestKubernetesUnreachable(t *testing.T) {
	cfg := kubetest.Config(t)
	cfg.Host = "https://127.0.0.1:1" // nothing listens there
	api, err := NewEndpointSliceClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewKubernetes(KubernetesConfig{Client: api, Namespace: "vmexec", Service: "vmexec-daemons", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// The error says why: connection refused.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := m.Nodes(ctx); !isNotSynced(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Nodes with the API server unreachable: err %v, want ErrNotSynced naming the refused connection", err)
	}
	m.Close()
	if _, err := m.Nodes(context.Background()); !isClosed(err) {
		t.Fatalf("Nodes after Close: %v, want ErrClosed", err)
	}
}
