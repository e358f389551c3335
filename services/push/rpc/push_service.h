// gRPC service devbridge.v1.Push (CONTRACT §7) on the callback API: the HTTP API's
// operations, each posted to the io thread where the PushNode lives.
#ifndef DEVBRIDGE_SERVICES_PUSH_RPC_PUSH_SERVICE_H_
#define DEVBRIDGE_SERVICES_PUSH_RPC_PUSH_SERVICE_H_

#include <functional>

#include "devbridge/v1/push.grpc.pb.h"
#include "services/push/core/push_node.h"

namespace devbridge::push {

class PushService final : public v1::Push::CallbackService {
 public:
  // `node` is touched only inside functions given to `post`.
  // With an `internal_token`, every call must carry it (authorization: Bearer), else
  // UNAUTHENTICATED (CONTRACT §10.2).
  PushService(std::function<void(std::function<void()>)> post, PushNode* node, std::string internal_token = "")
      : post_(std::move(post)), node_(node), token_(std::move(internal_token)) {}

  grpc::ServerUnaryReactor* SendToClient(grpc::CallbackServerContext* ctx, const v1::SendToClientRequest* req,
                                         v1::SendReply* reply) override;
  grpc::ServerUnaryReactor* SendToClients(grpc::CallbackServerContext* ctx, const v1::SendToClientsRequest* req,
                                          v1::SendReply* reply) override;
  grpc::ServerUnaryReactor* SendToGroup(grpc::CallbackServerContext* ctx, const v1::SendToGroupRequest* req,
                                        v1::SendReply* reply) override;
  grpc::ServerUnaryReactor* SendToSystem(grpc::CallbackServerContext* ctx, const v1::SendToSystemRequest* req,
                                         v1::SendReply* reply) override;
  grpc::ServerUnaryReactor* BindGroup(grpc::CallbackServerContext* ctx, const v1::BindGroupRequest* req,
                                      v1::Empty* reply) override;
  grpc::ServerUnaryReactor* UnbindGroup(grpc::CallbackServerContext* ctx, const v1::UnbindGroupRequest* req,
                                        v1::Empty* reply) override;
  grpc::ServerUnaryReactor* ListOnline(grpc::CallbackServerContext* ctx, const v1::ListOnlineRequest* req,
                                       v1::ListOnlineReply* reply) override;
  grpc::ServerUnaryReactor* CloseClient(grpc::CallbackServerContext* ctx, const v1::CloseClientRequest* req,
                                        v1::Empty* reply) override;

 private:
  // Submits `m` on the io thread and finishes the call; `on_id` stores the message id.
  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* ctx, v1::PushMessage m,
                                   std::function<void(const std::string&)> on_id);

  std::function<void(std::function<void()>)> post_;
  PushNode* node_;
  std::string token_;
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_RPC_PUSH_SERVICE_H_
