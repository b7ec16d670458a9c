package enroll

import (
	"context"
	"crypto/tls"
	"log/slog"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	rootgatev1 "github.com/rootgate/rootgate/api/rootgate/v1"
)

// NewGRPCServer returns a gRPC server with svc registered, serving TLS with
// tlsConfig (server-authenticated; see ServingCert.TLSConfig), with bounded
// message sizes and streams, a keepalive policy that sheds idle and abusive
// connections, and a handler that turns a panic into codes.Internal instead
// of a crash. opts are appended and may override these.
func NewGRPCServer(svc *Service, tlsConfig *tls.Config, opts ...grpc.ServerOption) *grpc.Server {
	base := []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.MaxConcurrentStreams(64),
		grpc.ConnectionTimeout(10 * time.Second),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     5 * time.Minute,
			MaxConnectionAge:      30 * time.Minute,
			MaxConnectionAgeGrace: 30 * time.Second,
			Time:                  2 * time.Minute,
			Timeout:               20 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             30 * time.Second,
			PermitWithoutStream: false,
		}),
		grpc.ChainUnaryInterceptor(recoverInterceptor(svc.log)),
	}
	gs := grpc.NewServer(append(base, opts...)...)
	rootgatev1.RegisterEnrollmentServiceServer(gs, svc)
	return gs
}

// recoverInterceptor answers codes.Internal for a handler that panics and
// logs the stack, so hostile input can never take the server down.
func recoverInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(ctx, req)
	}
}
