// Who is connected: this node's sessions (by connection and by clientId), their systems and
// groups, and the cluster-wide view of every client on every push replica, built from the
// membership events all replicas receive in the same order. Io thread only.
#ifndef DEVBRIDGE_SERVICES_PUSH_CORE_REGISTRY_H_
#define DEVBRIDGE_SERVICES_PUSH_CORE_REGISTRY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/time/time.h"

namespace devbridge::push {

using ConnId = uint64_t;

struct Session {
  ConnId conn = 0;
  std::string client_id;
  std::string system_id;
  std::string user_id;
  std::string extend;
  absl::flat_hash_set<std::string> groups;
  std::optional<std::vector<std::string>> allowed_groups;  // from the token; nullopt: any
  bool may_command = true;
  absl::Time connected_at;
};

// A client anywhere in the cluster.
struct Member {
  std::string system_id;
  std::string node;
  absl::flat_hash_set<std::string> groups;
};

class Registry {
 public:
  // Adds a local session. If its clientId was already connected here, that session is
  // returned (the caller closes it with 4009) and replaced.
  std::optional<ConnId> Add(const Session& session);
  // Removes a local session; returns it.
  std::optional<Session> Remove(ConnId conn);
  Session* ByConn(ConnId conn);
  Session* ByClient(const std::string& client_id);

  // Local group membership; false if nothing changed.
  bool Join(ConnId conn, const std::string& group);
  bool Leave(ConnId conn, const std::string& group);

  // Local connections of a system, or of one of its groups.
  std::vector<ConnId> SystemConns(const std::string& system_id) const;
  std::vector<ConnId> GroupConns(const std::string& system_id, const std::string& group) const;
  // Whether a system (group empty) or one of its groups has a local connection.
  bool HasLocal(const std::string& system_id, const std::string& group) const;
  size_t local_sessions() const { return by_conn_.size(); }
  std::vector<const Session*> LocalSessions() const;

  // Cluster view, fed by membership events (including this node's own).
  void MemberUp(const std::string& client_id, const std::string& system_id, const std::string& node);
  void MemberDown(const std::string& client_id, const std::string& node);
  void MemberJoin(const std::string& client_id, const std::string& group);
  void MemberLeave(const std::string& client_id, const std::string& group);
  // Forgets every member of `node` (it restarted or went away).
  void NodeGone(const std::string& node);
  const Member* FindMember(const std::string& client_id) const;
  // Client ids online in a system (or one of its groups), cluster-wide, sorted.
  std::vector<std::string> Online(const std::string& system_id, const std::string& group) const;

 private:
  static std::string GroupKey(const std::string& system_id, const std::string& group);

  // Sessions and members are large and one per client: node maps keep the slack of a hash
  // table's spare capacity to a pointer per slot (idle memory per connection).
  absl::node_hash_map<ConnId, Session> by_conn_;
  absl::flat_hash_map<std::string, ConnId> by_client_;
  absl::flat_hash_map<std::string, absl::flat_hash_set<ConnId>> system_conns_;
  absl::flat_hash_map<std::string, absl::flat_hash_set<ConnId>> group_conns_;
  absl::node_hash_map<std::string, Member> members_;
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_CORE_REGISTRY_H_
