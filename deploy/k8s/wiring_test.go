package k8s

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/vmexec/vmexec/internal/membership"
)

// objects decodes the manifests into their typed forms.
type objects struct {
	ns        *corev1.Namespace
	daemon    *appsv1.DaemonSet
	daemonSvc *corev1.Service
	router    *appsv1.Deployment
	routerSvc *corev1.Service
	pdb       *policyv1.PodDisruptionBudget
	role      *rbacv1.Role
	binding   *rbacv1.RoleBinding
	sas       map[string]*corev1.ServiceAccount
	secret    *corev1.Secret
	netpol    *networkingv1.NetworkPolicy
}

func typed(t *testing.T) objects {
	t.Helper()
	o := objects{sas: map[string]*corev1.ServiceAccount{}}
	into := func(m manifest, dst any) {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(m.obj.Object, dst, true); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
	}
	for _, m := range load(t) {
		switch m.obj.GetKind() {
		case "Namespace":
			o.ns = &corev1.Namespace{}
			into(m, o.ns)
		case "DaemonSet":
			o.daemon = &appsv1.DaemonSet{}
			into(m, o.daemon)
		case "Deployment":
			o.router = &appsv1.Deployment{}
			into(m, o.router)
		case "Service":
			s := &corev1.Service{}
			into(m, s)
			if s.Spec.ClusterIP == corev1.ClusterIPNone {
				o.daemonSvc = s
			} else {
				o.routerSvc = s
			}
		case "PodDisruptionBudget":
			o.pdb = &policyv1.PodDisruptionBudget{}
			into(m, o.pdb)
		case "Role":
			o.role = &rbacv1.Role{}
			into(m, o.role)
		case "RoleBinding":
			o.binding = &rbacv1.RoleBinding{}
			into(m, o.binding)
		case "ServiceAccount":
			sa := &corev1.ServiceAccount{}
			into(m, sa)
			o.sas[sa.Name] = sa
		case "Secret":
			o.secret = &corev1.Secret{}
			into(m, o.secret)
		case "NetworkPolicy":
			o.netpol = &networkingv1.NetworkPolicy{}
			into(m, o.netpol)
		default:
			t.Fatalf("%s: a kind this test does not know; add it", m)
		}
	}
	for name, v := range map[string]bool{"Namespace": o.ns != nil, "DaemonSet": o.daemon != nil, "headless Service": o.daemonSvc != nil,
		"Deployment": o.router != nil, "router Service": o.routerSvc != nil, "PodDisruptionBudget": o.pdb != nil, "Role": o.role != nil,
		"RoleBinding": o.binding != nil, "Secret": o.secret != nil, "NetworkPolicy": o.netpol != nil} {
		if !v {
			t.Fatalf("deploy/k8s has no %s", name)
		}
	}
	return o
}

func selects(sel *metav1.LabelSelector, lbls map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Empty() && s.Matches(labels.Set(lbls))
}

// What no API server checks, because only controllers and the kubelet act on it: the
// selectors pick the pods they are meant to, the names refer to objects that exist, and
// the daemon runs where runsc is, privileged, on the node's data dir, probed on /health.
func TestManifestsWireTogether(t *testing.T) {
	o := typed(t)
	dpod, rpod := o.daemon.Spec.Template, o.router.Spec.Template
	check := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Errorf(format, args...)
		}
	}
	check(selects(o.daemon.Spec.Selector, dpod.Labels), "DaemonSet selector does not match its pods")
	check(selects(o.router.Spec.Selector, rpod.Labels), "Deployment selector does not match its pods")
	check(labels.SelectorFromSet(o.daemonSvc.Spec.Selector).Matches(labels.Set(dpod.Labels)), "headless Service does not select the daemons")
	check(!labels.SelectorFromSet(o.daemonSvc.Spec.Selector).Matches(labels.Set(rpod.Labels)), "headless Service selects the routers too")
	check(labels.SelectorFromSet(o.routerSvc.Spec.Selector).Matches(labels.Set(rpod.Labels)), "router Service does not select the routers")
	check(!labels.SelectorFromSet(o.routerSvc.Spec.Selector).Matches(labels.Set(dpod.Labels)), "router Service selects the daemons too")
	check(selects(o.pdb.Spec.Selector, rpod.Labels) && !selects(o.pdb.Spec.Selector, dpod.Labels), "PodDisruptionBudget does not cover exactly the routers")
	check(o.pdb.Spec.MinAvailable != nil && o.pdb.Spec.MinAvailable.IntValue() >= 1 && int(ptr.Deref(o.router.Spec.Replicas, 1)) > o.pdb.Spec.MinAvailable.IntValue(),
		"PodDisruptionBudget minAvailable %v with %d routers: a drain could never evict one, or could evict all", o.pdb.Spec.MinAvailable, ptr.Deref(o.router.Spec.Replicas, 1))
	check(selects(&o.netpol.Spec.PodSelector, dpod.Labels), "NetworkPolicy does not guard the daemons")
	check(len(o.netpol.Spec.Ingress) == 1 && len(o.netpol.Spec.Ingress[0].From) == 1 && selects(o.netpol.Spec.Ingress[0].From[0].PodSelector, rpod.Labels),
		"NetworkPolicy does not let the routers in")

	// Every object is in the one namespace.
	for _, m := range load(t) {
		if m.obj.GetKind() != "Namespace" {
			check(m.obj.GetNamespace() == o.ns.Name, "%s is in namespace %q, want %q", m, m.obj.GetNamespace(), o.ns.Name)
		}
	}

	// The membership's port: the headless Service's port named "http" (membership's
	// default PortName), served by the daemon container's port of that name.
	dc, rc := dpod.Spec.Containers[0], rpod.Spec.Containers[0]
	check(len(o.daemonSvc.Spec.Ports) == 1 && o.daemonSvc.Spec.Ports[0].Name == "http" && o.daemonSvc.Spec.Ports[0].TargetPort.StrVal == "http",
		"headless Service's port must be the one named http, to the container port http")
	check(slices.ContainsFunc(dc.Ports, func(p corev1.ContainerPort) bool {
		return p.Name == "http" && strings.HasSuffix(argValue(dc.Args, "--addr"), fmt.Sprint(":", p.ContainerPort))
	}),
		"daemon's --addr %q does not listen on its container port http", argValue(dc.Args, "--addr"))
	check(strings.HasPrefix(argValue(dc.Args, "--addr"), "0.0.0.0:"), "daemon must listen on the pod's addresses (0.0.0.0), got %q", argValue(dc.Args, "--addr"))
	check(argValue(rc.Args, "--service") == o.daemonSvc.Name, "router --service %q, want the headless Service %q", argValue(rc.Args, "--service"), o.daemonSvc.Name)
	check(argValue(rc.Args, "--members") == "kubernetes", "router --members %q, want kubernetes", argValue(rc.Args, "--members"))

	// The daemon: on runsc nodes, privileged, the node's data dir, its node's name.
	check(dpod.Spec.NodeSelector["vmexec.dev/runsc"] == "true", "daemon's nodeSelector lacks vmexec.dev/runsc: \"true\"")
	check(dc.SecurityContext != nil && ptr.Deref(dc.SecurityContext.Privileged, false), "daemon is not privileged (runsc needs it)")
	check(!dpod.Spec.HostNetwork, "daemon on hostNetwork (decided against: see daemon.yaml)")
	check(ptr.Deref(dpod.Spec.ShareProcessNamespace, false), "daemon pod does not share its process namespace: nothing would reap runsc's orphaned sandbox processes (see daemon.yaml)")
	data := volume(dpod.Spec, mountOf(dc, "/var/lib/vmexec"))
	check(data != nil && data.HostPath != nil && data.HostPath.Path == "/var/lib/vmexec" && argValue(dc.Args, "--data-dir") == "/var/lib/vmexec",
		"daemon's data dir is not the node's /var/lib/vmexec")
	check(envFrom(dc, "VMEXEC_NODE_NAME") == "spec.nodeName", "daemon's VMEXEC_NODE_NAME is not the node's name")
	for _, c := range []corev1.Container{dc, rc} {
		check(c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == "/health" && c.ReadinessProbe.HTTPGet.Port.StrVal == "http",
			"%s's readiness probe is not GET /health on port http", c.Name)
		check(env(c, "VMEXEC_AUTH_REQUIRED") == "true", "%s does not require API keys", c.Name)
		// The cluster settings: the Secret, mounted where --config points.
		cfg := argValue(c.Args, "--config")
		v := volume(podOf(o, c).Spec, mountOf(c, strings.TrimSuffix(cfg, "/config.yaml")))
		check(strings.HasSuffix(cfg, "/config.yaml") && v != nil && v.Secret != nil && v.Secret.SecretName == o.secret.Name,
			"%s's --config %q is not the Secret %s's config.yaml", c.Name, cfg, o.secret.Name)
	}
	check(strings.Contains(o.secret.StringData["config.yaml"], "postgres_url:") && strings.Contains(o.secret.StringData["config.yaml"], "s3:"),
		"the example Secret has no cluster.postgres_url or cluster.s3")

	// RBAC: the router's ServiceAccount is bound to a Role that can watch EndpointSlices;
	// the daemon's has no token.
	check(rpod.Spec.ServiceAccountName != "" && o.sas[rpod.Spec.ServiceAccountName] != nil, "router's ServiceAccount %q not in deploy/k8s", rpod.Spec.ServiceAccountName)
	check(o.sas[dpod.Spec.ServiceAccountName] != nil && !ptr.Deref(dpod.Spec.AutomountServiceAccountToken, true), "daemon's ServiceAccount mounts a token it does not need")
	check(o.binding.RoleRef.Kind == "Role" && o.binding.RoleRef.Name == o.role.Name, "RoleBinding does not bind the Role")
	check(slices.ContainsFunc(o.binding.Subjects, func(s rbacv1.Subject) bool {
		return s.Kind == "ServiceAccount" && s.Name == rpod.Spec.ServiceAccountName && s.Namespace == o.ns.Name
	}), "RoleBinding does not name the router's ServiceAccount")
}

func podOf(o objects, c corev1.Container) corev1.PodTemplateSpec {
	if c.Name == o.router.Spec.Template.Spec.Containers[0].Name {
		return o.router.Spec.Template
	}
	return o.daemon.Spec.Template
}

func argValue(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func mountOf(c corev1.Container, path string) string {
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return m.Name
		}
	}
	return ""
}

func volume(spec corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func envFrom(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

// as is cfg acting as a ServiceAccount of the manifests (the API server's RBAC, which
// envtest turns on, decides what it may do).
func as(cfg *rest.Config, ns, sa string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	return c
}

// The router, as its ServiceAccount with only the manifests' RBAC, follows the daemons
// in the headless Service's EndpointSlices (made here by hand, as the EndpointSlice
// controller would from the DaemonSet's pods: no controller runs), and may do nothing
// else: no Secrets, no other namespace. The daemon's ServiceAccount may not watch.
func TestRouterServiceAccountFollowsDaemons(t *testing.T) {
	c := applyAll(t)
	o := typed(t)
	ns, svc := o.ns.Name, o.daemonSvc.Name
	admin := kubernetes.NewForConfigOrDie(c.cfg)
	routerCfg := as(c.cfg, ns, o.router.Spec.Template.Spec.ServiceAccountName)
	routerCS := kubernetes.NewForConfigOrDie(routerCfg)
	routerAPI, err := membership.NewEndpointSliceClient(routerCfg)
	if err != nil {
		t.Fatal(err)
	}
	daemonCS := kubernetes.NewForConfigOrDie(as(c.cfg, ns, o.daemon.Spec.Template.Spec.ServiceAccountName))
	ctx := context.Background()

	m, err := membership.NewKubernetes(membership.KubernetesConfig{Client: routerAPI, Namespace: ns, Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	endpoint := func(node, ip string, ready bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)},
			NodeName: ptr.To(node), TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: o.daemon.Name + "-" + node}}
	}
	port := o.daemonSvc.Spec.Ports[0]
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-abcde", Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(port.Name), Port: ptr.To(port.Port), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{endpoint("worker-1", "10.244.1.7", true), endpoint("worker-2", "10.244.2.9", false)},
	}
	if _, err := admin.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.DiscoveryV1().EndpointSlices(ns).Delete(context.Background(), es.Name, metav1.DeleteOptions{})
	})
	want := []membership.Node{
		{Name: "worker-1", Address: "10.244.1.7:8080", Ready: true, Load: -1},
		{Name: "worker-2", Address: "10.244.2.9:8080", Ready: false, Load: -1},
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		ch := m.Changed()
		got, err := m.Nodes(wctx)
		if err != nil {
			t.Fatalf("the router's ServiceAccount cannot follow the daemons: %v", err)
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			break
		}
		select {
		case <-ch:
		case <-wctx.Done():
			t.Fatalf("router's view %+v, want %+v", got, want)
		}
	}

	for _, tc := range []struct {
		what string
		call func() error
	}{
		{"router reads Secrets", func() error { _, err := routerCS.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); return err }},
		{"router lists EndpointSlices in another namespace", func() error {
			_, err := routerCS.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"router writes EndpointSlices", func() error {
			return routerCS.DiscoveryV1().EndpointSlices(ns).Delete(ctx, es.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		}},
		{"daemon lists EndpointSlices", func() error {
			_, err := daemonCS.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
			return err
		}},
	} {
		if err := tc.call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: err %v, want 403 forbidden", tc.what, err)
		}
	}
}
