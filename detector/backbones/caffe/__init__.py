"""sppdet.detector.backbones.caffe: Caffe nets (the released SPP_net ZF-5 and R-CNN AlexNet) into
sppdet backbone checkpoints.

``schema`` declares the few Caffe protobuf messages read here (caffe.proto's field numbers);
``prototxt`` reads a net definition in any of Caffe's three layer formats into plain layer
records; ``caffemodel`` reads the trained blobs; ``mean`` reads ``--mean``; ``mapping`` checks a
net against a registered trunk and lays fc6 out for sppdet's pyramid; ``convert`` writes the
checkpoint (``sppdet convert-caffe``).
"""
