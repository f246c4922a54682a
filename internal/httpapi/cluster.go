package httpapi

import (
	"net/http"

	"github.com/vmexec/vmexec/api"
)

// Cluster mode's routes for the router (internal/router): who this node is, and
// adopting an agent a router took over for it. They need an admin key (they are
// not in scopedRoutes); on a single host adopt answers 501.

func (s *Server) clusterRoutes() {
	s.mux.HandleFunc("GET /v1/cluster/node", s.clusterNode)
	s.mux.HandleFunc("POST /v1/cluster/adopt", s.adopt)
}

func (s *Server) clusterNode(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.NodeInfo, error) {
		return api.NodeInfo{Node: s.svc.NodeName(), Compat: s.svc.Compat(r.Context())}, nil
	})(w, r)
}

func (s *Server) adopt(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, in api.AdoptRequest) (api.AdoptResult, error) {
		return s.svc.Adopt(r.Context(), in.AgentID, in.Epoch)
	})(w, r)
}
