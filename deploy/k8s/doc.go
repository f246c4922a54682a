// Package k8s holds vmexec's Kubernetes manifests (the *.yaml files here: the daemon
// DaemonSet and its headless Service, the router Deployment with its Service and
// PodDisruptionBudget, RBAC, a NetworkPolicy, an example Secret) and embeds them.
// Its tests apply every manifest to a real kube-apiserver and etcd with strict field
// validation, and run the router's membership against them under the router's
// ServiceAccount.
package k8s

import "embed"

// Files are the manifests, kustomization.yaml and secret.example.yaml included.
//
//go:embed *.yaml
var Files embed.FS
