package membership

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// KubernetesConfig configures membership from the EndpointSlices of the daemons'
// headless Service (deploy/k8s/daemon.yaml). The router's ServiceAccount needs get,
// list and watch on discovery.k8s.io endpointslices in Namespace (deploy/k8s/rbac.yaml).
type KubernetesConfig struct {
	// Client talks to the API server: NewEndpointSliceClient(rest.InClusterConfig())
	// in a pod.
	Client EndpointSliceAPI
	// Namespace holds the Service (in a pod: the ServiceAccount's namespace).
	Namespace string
	// Service is the headless Service's name: only EndpointSlices labelled
	// kubernetes.io/service-name=Service count.
	Service string
	// PortName is the Service port to dial (default "http"); a slice with a single
	// port uses that one whatever its name.
	PortName string
	// Resync replays the informer's cache this often (default 0: never; the watch
	// delivers every change).
	Resync time.Duration
	// Logger gets watch errors and malformed slices (default slog.Default()).
	Logger *slog.Logger
}

// Kubernetes is Members over an EndpointSlice informer. A node is an endpoint: its
// Name is the endpoint's nodeName (a DaemonSet runs one daemon per node), else the pod
// it targets, else its hostname, else its address; Ready is its ready condition (absent
// counts as ready, as the API defines).
type Kubernetes struct {
	*view
	cfg   KubernetesConfig
	store cache.Store
	// refreshMu makes each refresh's read of the cache and its publication one step,
	// so a refresh that read an older cache cannot publish after a newer one (the sync
	// waiter and the event handler both refresh).
	refreshMu sync.Mutex
	cancel    context.CancelFunc
	once      sync.Once
}

// NewKubernetes starts the informer and returns at once; Nodes waits for its first
// list.
func NewKubernetes(cfg KubernetesConfig) (*Kubernetes, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("membership: kubernetes: no client"))
	}
	if cfg.Namespace == "" || cfg.Service == "" {
		errs = append(errs, fmt.Errorf("membership: kubernetes: namespace %q and service %q must both be given", cfg.Namespace, cfg.Service))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.PortName == "" {
		cfg.PortName = "http"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	selector := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: cfg.Service}).String()
	api, ns := cfg.Client, cfg.Namespace
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return api.List(ctx, ns, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return api.Watch(ctx, ns, o)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &discoveryv1.EndpointSlice{}, cfg.Resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	ctx, cancel := context.WithCancel(context.Background())
	k := &Kubernetes{
		view: newView(fmt.Sprintf("membership: endpointslices of service %s/%s", cfg.Namespace, cfg.Service)),
		cfg:  cfg, store: inf.GetStore(), cancel: cancel,
	}
	k.view.diagnose = func(ctx context.Context) error {
		_, err := api.List(ctx, ns, metav1.ListOptions{LabelSelector: selector, Limit: 1})
		return err
	}
	if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		k.view.failed(err)
		cfg.Logger.Warn("membership: watching endpointslices failed; retrying", "namespace", cfg.Namespace, "service", cfg.Service, "err", err)
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("membership: kubernetes: %w", err)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.refresh() },
		UpdateFunc: func(any, any) { k.refresh() },
		DeleteFunc: func(any) { k.refresh() },
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("membership: kubernetes: %w", err)
	}
	go inf.RunWithContext(ctx)
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			k.refresh()
			k.view.markSynced()
		}
	}()
	return k, nil
}

// Close stops the informer and returns at once: its goroutines end soon after (one
// backing off from an unreachable API server ends when its wait does).
func (k *Kubernetes) Close() error {
	k.once.Do(func() {
		k.cancel()
		k.view.close()
	})
	return nil
}

// refresh rebuilds the view from the informer's cache.
func (k *Kubernetes) refresh() {
	k.refreshMu.Lock()
	defer k.refreshMu.Unlock()
	var all []*discoveryv1.EndpointSlice
	for _, o := range k.store.List() {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			all = append(all, s)
		}
	}
	k.view.set(NodesFromEndpointSlices(all, k.cfg.PortName, k.cfg.Logger))
}

// NodesFromEndpointSlices turns slices into nodes (unsorted). The same node seen in
// several slices (while the controller moves endpoints between slices, or in an IPv4
// and an IPv6 slice) counts once: ready wins over not ready, then IPv4 over IPv6, then
// the slice whose name sorts first. Endpoints of FQDN slices, slices without the port
// and endpoints without an address are left out (logged once per refresh).
func NodesFromEndpointSlices(all []*discoveryv1.EndpointSlice, portName string, log *slog.Logger) []Node {
	all = slices.Clone(all)
	slices.SortFunc(all, func(a, b *discoveryv1.EndpointSlice) int {
		return cmp.Or(cmp.Compare(familyRank(a.AddressType), familyRank(b.AddressType)), cmp.Compare(a.Name, b.Name))
	})
	byName := map[string]Node{}
	for _, s := range all {
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			log.Warn("membership: endpointslice is not of IP addresses; ignored", "slice", s.Name, "addressType", s.AddressType)
			continue
		}
		port, ok := slicePort(s, portName)
		if !ok {
			log.Warn("membership: endpointslice has no usable port; ignored", "slice", s.Name, "want", portName)
			continue
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			n := Node{Name: endpointName(ep), Address: net.JoinHostPort(ep.Addresses[0], strconv.Itoa(int(port))),
				Ready: ep.Conditions.Ready == nil || *ep.Conditions.Ready, Load: -1}
			if prev, seen := byName[n.Name]; seen && (prev.Ready || !n.Ready) {
				continue
			}
			byName[n.Name] = n
		}
	}
	nodes := make([]Node, 0, len(byName))
	for _, n := range byName {
		nodes = append(nodes, n)
	}
	return nodes
}

func familyRank(t discoveryv1.AddressType) int {
	if t == discoveryv1.AddressTypeIPv4 {
		return 0
	}
	return 1
}

// slicePort is the slice's port named name, or its only port.
func slicePort(s *discoveryv1.EndpointSlice, name string) (int32, bool) {
	var only int32
	for _, p := range s.Ports {
		if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		if p.Name != nil && *p.Name == name {
			return *p.Port, true
		}
		only = *p.Port
	}
	return only, len(s.Ports) == 1 && only != 0
}

func endpointName(ep discoveryv1.Endpoint) string {
	switch {
	case ep.NodeName != nil && *ep.NodeName != "":
		return *ep.NodeName
	case ep.TargetRef != nil && ep.TargetRef.Name != "":
		return ep.TargetRef.Name
	case ep.Hostname != nil && *ep.Hostname != "":
		return *ep.Hostname
	}
	return ep.Addresses[0]
}
