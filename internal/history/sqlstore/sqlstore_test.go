package sqlstore

import "testing"

func TestRebind(t *testing.T) {
	tests := []struct{ in, want string }{
		{"SELECT 1", "SELECT 1"},
		{"a = ? AND b = ?", "a = $1 AND b = $2"},
		{"json_set(m, '$.x?', ?)", "json_set(m, '$.x?', $1)"},
		{`SELECT "we?ird" FROM t WHERE id = ? LIMIT ?`, `SELECT "we?ird" FROM t WHERE id = $1 LIMIT $2`},
	}
	for _, tt := range tests {
		if got := Rebind(tt.in); got != tt.want {
			t.Errorf("Rebind(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
