"""Where preferences come from. Feedback scores text, never the policy's token ids."""
