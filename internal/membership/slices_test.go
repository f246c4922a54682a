package membership

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// How endpoints become nodes, for the cases the informer test does not make by hand:
// the same node in two slices, dual stack, names without a nodeName, absent ready
// conditions, other ports and FQDN slices.
func TestNodesFromEndpointSlices(t *testing.T) {
	ipv6 := func(s *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
		s.AddressType = discoveryv1.AddressTypeIPv6
		return s
	}
	named := func(s *discoveryv1.EndpointSlice, ports ...discoveryv1.EndpointPort) *discoveryv1.EndpointSlice {
		s.Ports = ports
		return s
	}
	port := func(name string, p int32) discoveryv1.EndpointPort {
		return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(p)}
	}
	for _, tc := range []struct {
		name   string
		slices []*discoveryv1.EndpointSlice
		want   string
	}{
		{"moving between slices: ready wins", []*discoveryv1.EndpointSlice{
			slice("a", "s", 80, ep("n1", "10.0.0.1", false)),
			slice("b", "s", 80, ep("n1", "10.0.0.1", true)),
		}, "n1 10.0.0.1:80 true"},
		{"dual stack: IPv4 first", []*discoveryv1.EndpointSlice{
			ipv6(slice("a6", "s", 80, ep("n1", "fd00::1", true))),
			slice("z4", "s", 80, ep("n1", "10.0.0.1", true)),
		}, "n1 10.0.0.1:80 true"},
		{"IPv6 only", []*discoveryv1.EndpointSlice{ipv6(slice("a6", "s", 80, ep("n1", "fd00::1", true)))}, "n1 [fd00::1]:80 true"},
		{"no ready condition counts as ready; names fall back to pod, hostname, address", []*discoveryv1.EndpointSlice{
			slice("a", "s", 80,
				discoveryv1.Endpoint{Addresses: []string{"10.0.0.1"}, TargetRef: &corev1.ObjectReference{Name: "pod-1"}},
				discoveryv1.Endpoint{Addresses: []string{"10.0.0.2"}, Hostname: ptr.To("host-2")},
				discoveryv1.Endpoint{Addresses: []string{"10.0.0.3"}},
				discoveryv1.Endpoint{}), // no address: left out
		}, "10.0.0.3 10.0.0.3:80 true, host-2 10.0.0.2:80 true, pod-1 10.0.0.1:80 true"},
		{"the named port among several", []*discoveryv1.EndpointSlice{
			named(slice("a", "s", 0, ep("n1", "10.0.0.1", true)), port("metrics", 9090), port("http", 8080)),
		}, "n1 10.0.0.1:8080 true"},
		{"a single port whatever its name", []*discoveryv1.EndpointSlice{
			named(slice("a", "s", 0, ep("n1", "10.0.0.1", true)), port("", 8080)),
		}, "n1 10.0.0.1:8080 true"},
		{"several ports, none named http: ignored", []*discoveryv1.EndpointSlice{
			named(slice("a", "s", 0, ep("n1", "10.0.0.1", true)), port("a", 1), port("b", 2)),
		}, ""},
		{"FQDN slices ignored", []*discoveryv1.EndpointSlice{
			{ObjectMeta: metav1.ObjectMeta{Name: "f"}, AddressType: discoveryv1.AddressTypeFQDN,
				Ports: []discoveryv1.EndpointPort{port("http", 80)}, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"daemon.example"}}}},
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := NodesFromEndpointSlices(tc.slices, "http", discardLogger())
			var got []string
			for _, n := range nodes {
				if n.Load != -1 || n.Capacity != 0 {
					t.Errorf("endpoint %s: load %d capacity %d, want unknown (-1, 0)", n.Name, n.Load, n.Capacity)
				}
				got = append(got, fmt.Sprintf("%s %s %v", n.Name, n.Address, n.Ready))
			}
			slices.Sort(got)
			if s := strings.Join(got, ", "); s != tc.want {
				t.Errorf("got %q\nwant %q", s, tc.want)
			}
		})
	}
}
