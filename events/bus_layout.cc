#include "events/bus_layout.h"

namespace devbridge::events {

std::vector<StreamRef> PushStreams(const v1::PushMessage& message) {
  switch (message.kind()) {
    case v1::PushMessage::SEND_TO_SYSTEM:
      return {{message.system_id(), ""}};
    case v1::PushMessage::SEND_TO_GROUP:
    case v1::PushMessage::BIND_GROUP:
    case v1::PushMessage::UNBIND_GROUP:
      return {{message.system_id(), message.group_name()}};
    default:
      return {};
  }
}

bool AffectsCluster(const v1::Event& event) {
  switch (event.body_case()) {
    case v1::Event::kData:
      // The result goes to the client that asked, on whichever replica holds it.
      return event.data().solicited() && !event.data().client_id().empty();
    case v1::Event::kPush:
      return event.push().kind() != v1::PushMessage::SEND_TO_SYSTEM &&
             event.push().kind() != v1::PushMessage::SEND_TO_GROUP;
    case v1::Event::kDeviceState:
    case v1::Event::kResponsive:
      return false;
    default:
      return true;  // a reset, or a body a newer writer added: every replica should see it
  }
}

bool HasEffectsPart(const v1::Event& event) { return event.streams().empty() || AffectsCluster(event); }

std::string EncodeEffects(v1::Event event) {
  event.set_seq(0);
  event.set_part(v1::Event::EFFECTS);
  for (v1::StreamOffset& stream : *event.mutable_streams()) stream.set_offset(0);
  return event.SerializeAsString();
}

std::string EncodeFanoutBase(v1::Event event) {
  event.set_seq(0);
  event.set_part(v1::Event::FANOUT);
  event.clear_streams();
  return event.SerializeAsString();
}

std::string EncodeFanout(const std::string& base, const StreamRef& stream, uint64_t offset) {
  v1::Event suffix;
  v1::StreamOffset* s = suffix.add_streams();
  s->set_system_id(stream.system_id);
  s->set_group_name(stream.group_name);
  s->set_offset(offset);
  return base + suffix.SerializeAsString();
}

}  // namespace devbridge::events
