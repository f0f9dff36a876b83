//go:build tools

package tools

import (
	_ "github.com/caddyserver/certmagic"
	_ "github.com/gorilla/websocket"
	_ "github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	_ "github.com/spiffe/go-spiffe/v2/spiffeid"
	_ "github.com/spiffe/go-spiffe/v2/svid/x509svid"
	_ "golang.org/x/net/http2"
	_ "google.golang.org/grpc"
)
