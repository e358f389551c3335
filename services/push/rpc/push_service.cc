#include "services/push/rpc/push_service.h"

#include "common/grpc_status.h"
#include "grpcutil/security.h"

namespace devbridge::push {
namespace {

template <typename Req>
v1::PushMessage Message(v1::PushMessage::Kind kind, const Req& req) {
  v1::PushMessage m;
  m.set_kind(kind);
  m.set_system_id(req.system_id());
  return m;
}

template <typename Req>
void Content(const Req& req, v1::PushMessage* m) {
  m->set_send_user_id(req.send_user_id());
  m->set_code(req.code());
  m->set_msg(req.msg());
  m->set_data(req.data());
}

}  // namespace

grpc::ServerUnaryReactor* PushService::Submit(grpc::CallbackServerContext* ctx, v1::PushMessage m,
                                              std::function<void(const std::string&)> on_id) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  post_([this, reactor, m = std::move(m), on_id = std::move(on_id)]() mutable {
    node_->Submit(std::move(m), [reactor, on_id = std::move(on_id)](absl::StatusOr<std::string> id) {
      if (!id.ok()) return reactor->Finish(common::ToGrpcStatus(id.status()));
      if (on_id) on_id(*id);
      reactor->Finish(grpc::Status::OK);
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* PushService::SendToClient(grpc::CallbackServerContext* ctx, const v1::SendToClientRequest* req,
                                                    v1::SendReply* reply) {
  v1::PushMessage m = Message(v1::PushMessage::SEND_TO_CLIENTS, *req);
  m.add_client_ids(req->client_id());
  Content(*req, &m);
  return Submit(ctx, std::move(m), [reply](const std::string& id) { reply->set_message_id(id); });
}

grpc::ServerUnaryReactor* PushService::SendToClients(grpc::CallbackServerContext* ctx,
                                                     const v1::SendToClientsRequest* req, v1::SendReply* reply) {
  v1::PushMessage m = Message(v1::PushMessage::SEND_TO_CLIENTS, *req);
  for (const auto& id : req->client_ids()) m.add_client_ids(id);
  Content(*req, &m);
  return Submit(ctx, std::move(m), [reply](const std::string& id) { reply->set_message_id(id); });
}

grpc::ServerUnaryReactor* PushService::SendToGroup(grpc::CallbackServerContext* ctx, const v1::SendToGroupRequest* req,
                                                   v1::SendReply* reply) {
  v1::PushMessage m = Message(v1::PushMessage::SEND_TO_GROUP, *req);
  m.set_group_name(req->group_name());
  Content(*req, &m);
  return Submit(ctx, std::move(m), [reply](const std::string& id) { reply->set_message_id(id); });
}

grpc::ServerUnaryReactor* PushService::SendToSystem(grpc::CallbackServerContext* ctx, const v1::SendToSystemRequest* req,
                                                    v1::SendReply* reply) {
  v1::PushMessage m = Message(v1::PushMessage::SEND_TO_SYSTEM, *req);
  Content(*req, &m);
  return Submit(ctx, std::move(m), [reply](const std::string& id) { reply->set_message_id(id); });
}

grpc::ServerUnaryReactor* PushService::BindGroup(grpc::CallbackServerContext* ctx, const v1::BindGroupRequest* req,
                                                 v1::Empty* /*reply*/) {
  v1::PushMessage m = Message(v1::PushMessage::BIND_GROUP, *req);
  m.add_client_ids(req->client_id());
  m.set_group_name(req->group_name());
  m.set_user_id(req->user_id());
  m.set_extend(req->extend());
  return Submit(ctx, std::move(m), nullptr);
}

grpc::ServerUnaryReactor* PushService::UnbindGroup(grpc::CallbackServerContext* ctx, const v1::UnbindGroupRequest* req,
                                                   v1::Empty* /*reply*/) {
  v1::PushMessage m = Message(v1::PushMessage::UNBIND_GROUP, *req);
  m.add_client_ids(req->client_id());
  m.set_group_name(req->group_name());
  return Submit(ctx, std::move(m), nullptr);
}

grpc::ServerUnaryReactor* PushService::CloseClient(grpc::CallbackServerContext* ctx, const v1::CloseClientRequest* req,
                                                   v1::Empty* /*reply*/) {
  v1::PushMessage m = Message(v1::PushMessage::CLOSE_CLIENT, *req);
  m.add_client_ids(req->client_id());
  return Submit(ctx, std::move(m), nullptr);
}

grpc::ServerUnaryReactor* PushService::ListOnline(grpc::CallbackServerContext* ctx, const v1::ListOnlineRequest* req,
                                                  v1::ListOnlineReply* reply) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status auth = grpcutil::CheckToken(*ctx, token_); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  post_([this, reactor, reply, system = req->system_id(), group = req->group_name()] {
    node_->Online(system, group, [reactor, reply](std::vector<std::string> ids) {
      for (auto& id : ids) reply->add_client_ids(std::move(id));
      reply->set_count(static_cast<uint32_t>(reply->client_ids_size()));
      reactor->Finish(grpc::Status::OK);
    });
  });
  return reactor;
}

}  // namespace devbridge::push
