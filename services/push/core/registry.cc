#include "services/push/core/registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace devbridge::push {

std::string Registry::GroupKey(const std::string& system_id, const std::string& group) {
  return absl::StrCat(system_id, "\x1f", group);
}

std::optional<ConnId> Registry::Add(const Session& session) {
  std::optional<ConnId> replaced;
  if (auto it = by_client_.find(session.client_id); it != by_client_.end()) {
    replaced = it->second;
    Remove(it->second);
  }
  const ConnId conn = session.conn;
  by_client_[session.client_id] = conn;
  system_conns_[session.system_id].insert(conn);
  for (const auto& g : session.groups) group_conns_[GroupKey(session.system_id, g)].insert(conn);
  by_conn_.emplace(conn, session);
  return replaced;
}

std::optional<Session> Registry::Remove(ConnId conn) {
  auto it = by_conn_.find(conn);
  if (it == by_conn_.end()) return std::nullopt;
  Session s = std::move(it->second);
  by_conn_.erase(it);
  if (auto c = by_client_.find(s.client_id); c != by_client_.end() && c->second == conn) by_client_.erase(c);
  if (auto sys = system_conns_.find(s.system_id); sys != system_conns_.end()) {
    sys->second.erase(conn);
    if (sys->second.empty()) system_conns_.erase(sys);
  }
  for (const auto& g : s.groups) {
    auto grp = group_conns_.find(GroupKey(s.system_id, g));
    if (grp == group_conns_.end()) continue;
    grp->second.erase(conn);
    if (grp->second.empty()) group_conns_.erase(grp);
  }
  return s;
}

Session* Registry::ByConn(ConnId conn) {
  auto it = by_conn_.find(conn);
  return it == by_conn_.end() ? nullptr : &it->second;
}

Session* Registry::ByClient(const std::string& client_id) {
  auto it = by_client_.find(client_id);
  return it == by_client_.end() ? nullptr : ByConn(it->second);
}

std::vector<const Session*> Registry::LocalSessions() const {
  std::vector<const Session*> out;
  out.reserve(by_conn_.size());
  for (const auto& [conn, s] : by_conn_) out.push_back(&s);
  return out;
}

bool Registry::Join(ConnId conn, const std::string& group) {
  Session* s = ByConn(conn);
  if (s == nullptr || !s->groups.insert(group).second) return false;
  group_conns_[GroupKey(s->system_id, group)].insert(conn);
  return true;
}

bool Registry::Leave(ConnId conn, const std::string& group) {
  Session* s = ByConn(conn);
  if (s == nullptr || s->groups.erase(group) == 0) return false;
  auto grp = group_conns_.find(GroupKey(s->system_id, group));
  if (grp != group_conns_.end()) {
    grp->second.erase(conn);
    if (grp->second.empty()) group_conns_.erase(grp);
  }
  return true;
}

std::vector<ConnId> Registry::SystemConns(const std::string& system_id) const {
  auto it = system_conns_.find(system_id);
  if (it == system_conns_.end()) return {};
  return {it->second.begin(), it->second.end()};
}

bool Registry::HasLocal(const std::string& system_id, const std::string& group) const {
  const auto& conns = group.empty() ? system_conns_ : group_conns_;
  auto it = conns.find(group.empty() ? system_id : GroupKey(system_id, group));
  return it != conns.end() && !it->second.empty();
}

std::vector<ConnId> Registry::GroupConns(const std::string& system_id, const std::string& group) const {
  auto it = group_conns_.find(GroupKey(system_id, group));
  if (it == group_conns_.end()) return {};
  return {it->second.begin(), it->second.end()};
}

void Registry::MemberUp(const std::string& client_id, const std::string& system_id, const std::string& node) {
  Member& m = members_[client_id];
  m.system_id = system_id;
  m.node = node;
  m.groups.clear();
}

void Registry::MemberDown(const std::string& client_id, const std::string& node) {
  auto it = members_.find(client_id);
  // A later session of the same client on another node has already replaced this one.
  if (it != members_.end() && it->second.node == node) members_.erase(it);
}

void Registry::MemberJoin(const std::string& client_id, const std::string& group) {
  if (auto it = members_.find(client_id); it != members_.end()) it->second.groups.insert(group);
}

void Registry::MemberLeave(const std::string& client_id, const std::string& group) {
  if (auto it = members_.find(client_id); it != members_.end()) it->second.groups.erase(group);
}

void Registry::NodeGone(const std::string& node) {
  for (auto it = members_.begin(); it != members_.end();) {
    if (it->second.node == node) {
      members_.erase(it++);
    } else {
      ++it;
    }
  }
}

const Member* Registry::FindMember(const std::string& client_id) const {
  auto it = members_.find(client_id);
  return it == members_.end() ? nullptr : &it->second;
}

std::vector<std::string> Registry::Online(const std::string& system_id, const std::string& group) const {
  std::vector<std::string> out;
  for (const auto& [id, m] : members_) {
    if (m.system_id == system_id && (group.empty() || m.groups.count(group) > 0)) out.push_back(id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace devbridge::push
